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


# ---------------------------------------------------------------- REPORT rows are validated

NUMEL = 1000
RULES = accounting.ReportRules(worker=1, clients=frozenset({3, 5}), numel=NUMEL,
                               samples={3: 17, 5: 20}, codecs={Kind.UPDATE: 9})


def worker_log(rnd=2):
    """What worker rank 1 (clients 3 and 5) logs in round `rnd` after a fresh start."""
    w = Ledger()
    w.log(round=-1, kind=Kind.REPORT, client=-1, worker=1, nbytes=90, xfer_s=0.01)  # hello
    w.log(round=rnd, kind=Kind.ASSIGN, client=-1, worker=1, nbytes=48, xfer_s=0.2)
    w.log(round=rnd, kind=Kind.MODEL, client=3, worker=1, nbytes=900, codec_s=0.25)
    w.log(round=rnd, kind=Kind.UPDATE, client=3, worker=1, nbytes=120, dense_bytes=4 * NUMEL,
          numel=NUMEL, nnz=100, codec_id=9, codec_s=0.125, compute_s=2.0, train_loss=0.5,
          samples=17)
    # start-up infrastructure (the run identity), received: its row comes with round 2's
    w.log(round=-1, kind=Kind.MEMORY, client=-1, worker=1, nbytes=180)
    w.log(round=rnd, kind=Kind.REPORT, client=-1, worker=1, nbytes=500)
    return w.drain()


def test_a_valid_report_is_read_back_unchanged():
    rows = worker_log()
    back = accounting.parse_report(accounting.report_payload(rows), round=2, rules=RULES)
    assert back.tobytes() == rows.tobytes()
    assert accounting.parse_report(accounting.report_payload(rows)).tobytes() == rows.tobytes()


# (row, field, value, message); row 2 is the MODEL, 3 the UPDATE, 1 the ASSIGN
ANY_LOG = [  # wrong in any worker's log: checked without rules too
    (3, "kind", 200, "kind = 200, allowed: ASSIGN"),
    (3, "kind", int(Kind.FAIL), "kind = 6"),
    (1, "direction", accounting.UP, "direction = 1"),
    (3, "direction", 7, "direction = 7"),
    (2, "bytes", -1, "bytes = -1"),
    (2, "bytes", 12, "bytes = 12"),
    (2, "bytes", 2**62, "bytes = 4611686018427387904"),
    (2, "codec_s", np.nan, "codec_s = nan"),
    (1, "xfer_s", -1.0, "xfer_s = -1.0"),
    (3, "compute_s", np.inf, "compute_s = inf"),
    (2, "compute_s", 1.0, "compute_s = 1.0, allowed: 0 except in UPDATE rows"),
    (3, "train_loss", -0.5, "train_loss = -0.5"),
    (2, "train_loss", 0.5, "train_loss = 0.5, allowed: >= 0 or NaN in UPDATE rows, NaN"),
    (3, "nnz", NUMEL + 1, "nnz = 1001"),
    (3, "nnz", -1, "nnz = -1"),
    (3, "dense_bytes", 3, "dense_bytes = 3, allowed: 4 \\* numel"),
]
WITH_RULES = [  # wrong for this worker and round: the server knows
    (3, "round", 7, "round = 7, allowed: 2 \\(or -1"),
    (0, "round", -2, "round = -2"),
    (2, "worker", 5, "worker = 5, allowed: 1 \\(the sending rank\\)"),
    (3, "worker", -1, "worker = -1"),
    (3, "client", 4, "client = 4, allowed: a client this rank hosts"),
    (1, "client", 3, "client = 3"),
    (3, "numel", 999, "numel = 999"),
    (2, "numel", 1, "numel = 1"),
    (3, "codec_id", 1, "codec_id = 1"),
    (2, "codec_id", 9, "codec_id = 9"),
    (3, "samples", 16, "samples = 16"),
    (2, "samples", 1, "samples = 1"),
]


def _broken(row, name, value):
    rows = worker_log()
    rows[row][name] = value
    if name == "numel":  # keep dense_bytes consistent, so numel itself is what is wrong
        rows[row]["dense_bytes"] = 4 * value
    return accounting.report_payload(rows)


@pytest.mark.parametrize("row, name, value, message", ANY_LOG)
def test_report_rows_out_of_range_are_refused(row, name, value, message):
    from fedmpi.wire import WireFormatError

    payload = _broken(row, name, value)
    with pytest.raises(WireFormatError, match=f"REPORT row {row} .*{message}"):
        accounting.parse_report(payload)
    with pytest.raises(WireFormatError, match=f"REPORT row {row} .*{message}"):
        accounting.parse_report(payload, round=2, rules=RULES)


def test_client_state_never_travels_in_a_report():
    """Regression (issue 12): a worker's compressor-state snapshot (MEMORY sent up, one
    per hosted client) was accepted; now MEMORY is start-up infrastructure only."""
    from fedmpi.wire import WireFormatError

    rows = worker_log()
    rows[4]["direction"] = accounting.UP
    with pytest.raises(WireFormatError, match="REPORT row 4 .*direction = 1"):
        accounting.parse_report(accounting.report_payload(rows), round=2, rules=RULES)
    for name, value, message in (("round", 2, "round = 2, allowed: -1 for MEMORY"),
                                 ("client", 5, "client = 5")):
        rows = worker_log()
        rows[4][name] = value
        with pytest.raises(WireFormatError, match=f"REPORT row 4 .*{message}"):
            accounting.parse_report(accounting.report_payload(rows), round=2, rules=RULES)


@pytest.mark.parametrize("row, name, value, message", WITH_RULES)
def test_report_rows_that_do_not_fit_the_worker_are_refused(row, name, value, message):
    from fedmpi.wire import WireFormatError

    with pytest.raises(WireFormatError, match=f"REPORT row {row} .*{message}"):
        accounting.parse_report(_broken(row, name, value), round=2, rules=RULES)
