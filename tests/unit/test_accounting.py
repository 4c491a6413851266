import numpy as np
import pytest

from fedmpi import accounting
from fedmpi.accounting import AccountingError, Ledger
from fedmpi.wire import Kind


def views(up_bytes_worker=120, up_bytes_server=120):
    s, w = Ledger(), Ledger()
    s.log(round=0, kind=Kind.ASSIGN, client=-1, worker=1, nbytes=40)
    w.log(round=0, kind=Kind.ASSIGN, client=-1, worker=1, nbytes=40)
    s.log(round=0, kind=Kind.MODEL, client=3, worker=1, nbytes=900, dense_bytes=4000, numel=1000,
          nnz=500, codec_id=7, codec_s=0.5)
    w.log(round=0, kind=Kind.MODEL, client=3, worker=1, nbytes=900, codec_s=0.25)
    w.log(round=0, kind=Kind.UPDATE, client=3, worker=1, nbytes=up_bytes_worker, dense_bytes=4000,
          numel=1000, nnz=100, codec_id=9, codec_s=0.125, compute_s=2.0, train_loss=0.5,
          samples=17)
    s.log(round=0, kind=Kind.UPDATE, client=3, worker=1, nbytes=up_bytes_server, codec_s=0.0625)
    return s.drain(), w.drain()


def test_join_takes_each_side_from_the_right_end():
    s, w = views()
    cols = accounting.join(s, w)
    assert list(cols) == list(accounting.MESSAGE_COLUMNS)
    assert len(cols["round"]) == 3
    model = cols["kind"] == Kind.MODEL
    assert cols["encode_s"][model][0] == 0.5 and cols["decode_s"][model][0] == 0.25
    assert cols["nnz"][model][0] == 500 and cols["dense_bytes"][model][0] == 4000
    update = cols["kind"] == Kind.UPDATE
    assert cols["direction"][update][0] == accounting.UP
    assert cols["encode_s"][update][0] == 0.125 and cols["decode_s"][update][0] == 0.0625
    assert cols["nnz"][update][0] == 100 and cols["codec_id"][update][0] == 9
    np.testing.assert_array_equal(cols["sender_bytes"], cols["receiver_bytes"])
    totals = accounting.LinkTotals()
    totals.add(s, w)
    totals.check()


def test_size_disagreement_fails_loudly():
    s, w = views(up_bytes_worker=120, up_bytes_server=119)
    with pytest.raises(AccountingError, match="sender logged 120 bytes, receiver 119"):
        accounting.join(s, w)


def test_missing_message_fails_loudly():
    s, w = views()
    with pytest.raises(AccountingError, match="missing from the worker"):
        accounting.join(s, w[:-1])


def test_link_totals_compare_the_raw_views():
    s, w = views()
    totals = accounting.LinkTotals()
    totals.add(s, w)
    assert totals.sender == {(1, 0): 940, (1, 1): 120}
    assert totals.receiver == totals.sender
    totals.check()
    # A worker that logs one extra uplink message (under any key) breaks the totals,
    # even though every message the join sees would still match.
    extra = Ledger()
    extra.log(round=0, kind=Kind.REPORT, client=-1, worker=1, nbytes=64)
    totals.add(np.empty(0, accounting.VIEW_DTYPE), extra.drain())
    with pytest.raises(AccountingError, match="up: sender total 184 bytes != receiver total 120"):
        totals.check()


def test_report_payload_round_trip_and_bad_length():
    _, w = views()
    back = accounting.parse_report(accounting.report_payload(w))
    assert back.tobytes() == w.tobytes()
    from fedmpi.wire import WireFormatError

    with pytest.raises(WireFormatError):
        accounting.parse_report(accounting.report_payload(w)[:-3])
