"""Readers of received messages: every field checked, errors name rank, round and client.

Each crafted buffer below has valid checksums: what is wrong is a field a sender
must not write. The readers are what server.py and worker.py call on every
received buffer, so these are the errors a run fails with.
"""

import json
import struct

import numpy as np
import pytest

from fedmpi import accounting, protocol
from fedmpi.compress import build_pipeline, spec_of
from fedmpi.compressors import Context
from fedmpi.compressors.stages import StagePipeline
from fedmpi.wire import HEADER_SIZE, Kind, WireFormatError, frame

HOSTED = frozenset({1, 3, 5})  # rank 1 of 2 workers, 6 clients


def control(kind, payload=b"", *, round=2, client=-1, codec_id=0, n_tensors=0):
    return frame(kind, round=round, client=client, payload=payload, codec_id=codec_id,
                 n_tensors=n_tensors)


# ---------------------------------------------------------------- hello


def hello(payload, **header):
    return control(Kind.REPORT, payload, **{"round": 0, **header})


def test_hello_round_trip_and_bytes():
    payload = protocol.hello_payload("node-1", "cuda:0 (NVIDIA H100)")
    assert payload == b'{"host": "node-1", "device": "cuda:0 (NVIDIA H100)"}'  # as before
    assert protocol.read_hello(hello(payload), src=2) == {"host": "node-1",
                                                           "device": "cuda:0 (NVIDIA H100)"}
    # a sender never writes what a reader refuses: control characters go, length is capped
    odd = protocol.hello_payload("a\x00b" + "x" * 400, "cpu\n")
    assert protocol.read_hello(hello(odd), src=2)["host"] == "ab" + "x" * 253


@pytest.mark.parametrize("payload, message", [
    (b"[]", "hello is a JSON array, expected an object with the keys host, device"),
    (b'"host"', "JSON string"),
    (b"1", "JSON number"),
    (b"null", "JSON null"),
    (b'{"host": "a"}', "keys \\['host'\\], expected exactly host, device"),
    (b'{"host": "a", "device": "b", "rank": 3}', "expected exactly host, device"),
    (b'{"host": "a", "host": "b", "device": "c"}', "repeats a key"),
    (b'{"host": 1, "device": "cpu"}', "field 'host' is 1: expected a printable string"),
    (b'{"host": "a", "device": ["cpu"]}', "field 'device'"),
    (b'{"host": "a\\u0000b", "device": "cpu"}', "field 'host'"),
    (json.dumps({"host": "h" * 256, "device": "cpu"}).encode(), "at most 255 characters"),
    (b"\xff\xfe{}", "not UTF-8 JSON"),
    (b"{", "not UTF-8 JSON"),
    (b"[" * 3000, "not UTF-8 JSON"),  # nesting deep enough for a RecursionError
    (b" " * 5000, "hello of 5000 bytes \\(at most 4096\\)"),
])
def test_malformed_hellos_are_refused_naming_the_sender(payload, message):
    """Was: AttributeError ('list' object has no attribute 'get') or a str() of anything."""
    with pytest.raises(WireFormatError, match=message) as err:
        protocol.read_hello(hello(payload), src=2)
    assert str(err.value).startswith("server (rank 0), round -1 (start-up), hello from rank 2: ")


@pytest.mark.parametrize("header, message", [
    ({"round": 3}, "REPORT for round 3, expected round 0"),
    ({"client": 4}, "REPORT for client 4, expected client -1"),
    ({"codec_id": 5}, "codec id 0x00000005, expected 0x00000000"),
    ({"n_tensors": 1}, "declares 1 tensors, the model has 0"),
])
def test_hello_header_fields_are_checked(header, message):
    with pytest.raises(WireFormatError, match=message):
        protocol.read_hello(hello(protocol.hello_payload("h", "cpu"), **header), src=1)


# ---------------------------------------------------------------- ASSIGN and STOP


def read(buf, *, last=None, feedback=False, rounds=10):
    return protocol.read_control(buf, rank=1, hosted=HOSTED, rounds=rounds, last=last,
                                 feedback=feedback)


def test_assign_and_stop_round_trip_and_bytes():
    payload = protocol.assign_payload(protocol.SAVE_STATE, [1, 5])
    assert payload == struct.pack("<3i", 1, 1, 5)  # int32 flags, then the clients
    msg = read(control(Kind.ASSIGN, payload), feedback=True, last=1)
    assert (msg.kind, msg.round, msg.flags, msg.clients) == (Kind.ASSIGN, 2, 1, (1, 5))
    assert read(control(Kind.ASSIGN, protocol.assign_payload(0, []))).clients == ()
    for status in protocol.STATUSES:
        assert protocol.stop_payload(status) == status.encode()
        msg = read(control(Kind.STOP, protocol.stop_payload(status), round=10), last=9)
        assert (msg.kind, msg.round, msg.status) == (Kind.STOP, 10, status)
    with pytest.raises(ValueError, match="not one of completed, interrupted"):
        protocol.stop_payload("failed")


@pytest.mark.parametrize("buf, kwargs, message", [
    (control(Kind.ASSIGN, struct.pack("<3i", 0, 3, 3)), {},
     "rank 1, round 2: assigned clients \\[3, 3\\] are not strictly increasing"),
    (control(Kind.ASSIGN, struct.pack("<3i", 0, 5, 3)), {}, "not strictly increasing"),
    (control(Kind.ASSIGN, struct.pack("<2i", 4, 3)), {},
     "rank 1, round 2: ASSIGN flags 0x4 have unknown bits"),
    (control(Kind.ASSIGN, struct.pack("<2i", -1, 3)), {}, "unknown bits"),
    (control(Kind.ASSIGN, struct.pack("<2i", 1, 3)), {}, "save client compressor states, but the uplink compressor keeps no state"),
    (control(Kind.ASSIGN, struct.pack("<3i", 0, 1, 2)), {}, "assigned clients \\[2\\] it does not host"),
    (control(Kind.ASSIGN, b""), {}, "ASSIGN payload of 0 bytes"),
    (control(Kind.ASSIGN, b"\0" * 6), {}, "ASSIGN payload of 6 bytes"),
    (control(Kind.ASSIGN, struct.pack("<i", 0), round=10), {},
     "rank 1, control message: ASSIGN for round 10; expected 0..9"),
    (control(Kind.ASSIGN, struct.pack("<i", 0), round=4), {"last": 2}, "after round 2: 3"),
    (control(Kind.ASSIGN, struct.pack("<i", 0), client=3), {}, "client 3, expected client -1"),
    (control(Kind.ASSIGN, struct.pack("<i", 0), n_tensors=2), {}, "declares 2 tensors"),
    (control(Kind.ASSIGN, struct.pack("<i", 0), codec_id=9), {}, "codec id 0x00000009"),
    (control(Kind.MODEL, b""), {}, "expected ASSIGN or STOP, got MODEL"),
    (control(Kind.STOP, b""), {}, "rank 1, round 2: STOP status b'' is not one of"),
    (control(Kind.STOP, b"done"), {}, "STOP status b'done'"),
    (control(Kind.STOP, b"completed\0"), {}, "STOP status"),
    (control(Kind.STOP, b"completed", round=11), {}, "STOP for round 11; expected 0..10"),
    (control(Kind.STOP, b"completed", round=5), {"last": 2}, "after round 2: 3"),
])
def test_malformed_control_messages_are_refused(buf, kwargs, message):
    with pytest.raises(WireFormatError, match=message):
        read(buf, **kwargs)


NAMES = ("prox_mu", "lr_scale")


def test_assign_carries_per_client_settings():
    payload = protocol.assign_payload(0, [1, 5], [[0.01, 1.0], [0.5, 2.0]])
    assert payload == struct.pack("<3i4f", 0, 1, 5, 0.01, 1.0, 0.5, 2.0)
    msg = protocol.read_control(control(Kind.ASSIGN, payload), rank=1, hosted=HOSTED, rounds=10,
                                last=None, feedback=False, settings=NAMES)
    assert msg.clients == (1, 5)
    assert msg.settings == ({"prox_mu": float(np.float32(0.01)), "lr_scale": 1.0},
                            {"prox_mu": 0.5, "lr_scale": 2.0})
    # no settings: exactly the payload of before (flags, then clients)
    assert protocol.assign_payload(0, [1, 5], ()) == struct.pack("<3i", 0, 1, 5)
    empty = protocol.read_control(control(Kind.ASSIGN, struct.pack("<i", 0)), rank=1,
                                  hosted=HOSTED, rounds=10, last=None, feedback=False,
                                  settings=NAMES)
    assert empty.clients == () and empty.settings == ()
    with pytest.raises(ValueError, match="finite"):
        protocol.assign_payload(0, [1], [[float("inf"), 1.0]])
    with pytest.raises(ValueError, match="for 2 clients"):
        protocol.assign_payload(0, [1, 5], [[1.0, 1.0]])


@pytest.mark.parametrize("payload, message", [
    (struct.pack("<3i", 0, 1, 5), "ASSIGN payload of 12 bytes \\(int32 flags, then int32 client "
     "ids, then 2 float32 setting\\(s\\) per client\\)"),  # settings missing
    (struct.pack("<2i2f", 0, 1, 0.1, 1.0) + b"\0" * 4, "ASSIGN payload of 20 bytes"),
    (struct.pack("<2i2f", 0, 1, float("nan"), 1.0),
     "ASSIGN settings of client 1 are \\[nan, 1.0\\]: every value must be finite "
     "\\(prox_mu, lr_scale\\)"),
    (struct.pack("<3i4f", 0, 1, 5, 0.1, 1.0, 0.2, float("-inf")), "ASSIGN settings of client 5"),
])
def test_malformed_assign_settings_are_refused(payload, message):
    with pytest.raises(WireFormatError, match="rank 1, round 2: " + message):
        protocol.read_control(control(Kind.ASSIGN, payload), rank=1, hosted=HOSTED, rounds=10,
                              last=None, feedback=False, settings=NAMES)


# ---------------------------------------------------------------- MODEL and UPDATE

MODEL = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}
SPEC = spec_of(MODEL)
PIPE = build_pipeline([{"prune": {"rate": 0.5}}, {"sparse": {}}, {"zstd": {}}])


def model_msg(kind=Kind.MODEL, *, round=2, client=3, n_tensors=2, codec_id=None, payload=None):
    payload = PIPE.encode(MODEL).payload if payload is None else payload
    return frame(kind, round=round, client=client, payload=payload,
                 codec_id=PIPE.codec_id if codec_id is None else codec_id, n_tensors=n_tensors)


CODEC = StagePipeline(PIPE)
CTX = Context(0, 2, -1, "down")


def read_model(buf):
    return protocol.read_model(buf, rank=1, round=2, client=3, codec=CODEC, spec=SPEC, ctx=CTX)


def read_update(buf, expected=frozenset({3, 5})):
    return protocol.read_update(buf, src=1, round=2, expected=expected, hosted=HOSTED,
                                codec=CODEC, spec=SPEC,
                                ctx_of=lambda c: Context(0, 2, c, "up").for_decode())


def test_models_and_updates_round_trip():
    want = PIPE.encode(MODEL).reconstructed
    got, seconds = read_model(model_msg())
    assert seconds >= 0 and all(np.array_equal(got[k], want[k]) for k in want)
    client, got, _ = read_update(model_msg(Kind.UPDATE))
    assert client == 3 and all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("buf, message", [
    (model_msg(n_tensors=3), "MODEL declares 3 tensors, the model has 2"),
    (model_msg(n_tensors=0), "MODEL declares 0 tensors"),
    (model_msg(codec_id=7), "codec id 0x00000007"),
    (model_msg(round=1), "MODEL for round 1, expected round 2"),
    (model_msg(client=5), "MODEL for client 5, expected client 3"),
    (model_msg(Kind.UPDATE), "expected a MODEL message, got UPDATE"),
    (model_msg(payload=PIPE.encode(MODEL).payload[:-1]), "section lengths"),
])
def test_a_worker_names_its_rank_round_and_client(buf, message):
    with pytest.raises(WireFormatError, match=message) as err:
        read_model(buf)
    assert str(err.value).startswith("rank 1, round 2 client 3: ")


@pytest.mark.parametrize("buf, expected, message", [
    (model_msg(Kind.UPDATE, n_tensors=3), {3}, "\\(client 3\\): UPDATE declares 3 tensors"),
    (model_msg(Kind.UPDATE, client=7), {3}, "\\(client 7\\): UPDATE for client 7, expected "
                                            "one of the expected clients"),
    (model_msg(Kind.UPDATE, client=4), {3, 4}, "\\(client 4\\): client 4 is not hosted by "
                                               "rank 1"),
    (model_msg(Kind.UPDATE, round=3), {3}, "\\(client 3\\): UPDATE for round 3"),
])
def test_the_server_names_rank_round_and_client(buf, expected, message):
    with pytest.raises(WireFormatError, match=message) as err:
        read_update(buf, expected)
    assert str(err.value).startswith("server (rank 0), round 2, update from rank 1 (client ")


def read_late(buf, expected=frozenset({3, 5})):
    return protocol.read_late_update(buf, src=1, round=2, expected=expected, hosted=HOSTED,
                                     codec=CODEC, spec=SPEC)


def test_a_late_update_is_checked_like_any_other_but_not_decoded():
    """After the round deadline the server drops an update; its header must still be one
    it is owed, from the rank that hosts the client (the payload is never decoded)."""
    assert read_late(model_msg(Kind.UPDATE)) == 3
    assert read_late(model_msg(Kind.UPDATE, payload=b"not a payload")) == 3  # dropped unread
    for buf, expected, message in [
        (model_msg(Kind.UPDATE, client=5), {3}, "UPDATE for client 5, expected"),
        (model_msg(Kind.UPDATE, client=4), {3, 4}, "client 4 is not hosted by rank 1"),
        (model_msg(Kind.UPDATE, round=1), {3}, "UPDATE for round 1"),
        (model_msg(Kind.UPDATE, n_tensors=3), {3}, "UPDATE declares 3 tensors"),
        (model_msg(Kind.MODEL), {3}, "expected a UPDATE message|expected an UPDATE message"),
    ]:
        with pytest.raises(WireFormatError, match=message) as err:
            read_late(buf, expected)
        assert str(err.value).startswith("server (rank 0), round 2, late update from rank 1")


def test_a_damaged_header_is_named_too():
    buf = model_msg(Kind.UPDATE)
    buf[HEADER_SIZE - 1] ^= 1
    with pytest.raises(WireFormatError, match="rank 1 \\(client unknown: header damaged\\): "
                                              "header checksum"):
        read_update(buf)


def test_any_other_decoder_error_still_names_the_message():
    """The last resort: an exception a decoder should not raise still becomes a
    WireFormatError with the context (the fuzz tests make sure none does)."""
    class Broken:
        codec_id = PIPE.codec_id

        def decode(self, payload, spec, ctx):  # Compressor.decode's signature
            return {}["missing"]

    with pytest.raises(WireFormatError, match="rank 1, round 2 client 3: undecodable "
                                              "message \\(KeyError: 'missing'\\)"):
        protocol.read_model(model_msg(), rank=1, round=2, client=3, codec=Broken(),
                            spec=SPEC, ctx=CTX)


# ---------------------------------------------------------------- REPORT and residuals

RULES = accounting.ReportRules(worker=1, clients=HOSTED, numel=8, samples={1: 4, 3: 5, 5: 6},
                               codecs={Kind.UPDATE: PIPE.codec_id, Kind.MEMORY: 11})


def report(rows, round=2):
    return control(Kind.REPORT, accounting.report_payload(rows), round=round)


def test_report_with_an_unknown_kind_names_the_worker_and_round():
    """Was: ValueError: 200 is not a valid Kind (from the join, after accepting it)."""
    led = accounting.Ledger()
    led.log(round=2, kind=Kind.REPORT, client=-1, worker=1, nbytes=100)
    rows = led.drain()
    assert len(protocol.read_report(report(rows), src=1, round=2, rules=RULES)) == 1
    rows["kind"] = 200
    with pytest.raises(WireFormatError, match="^server \\(rank 0\\), round 2, report from "
                                              "rank 1: REPORT row 0 \\(round 2, kind 200, "
                                              "client -1\\): kind = 200"):
        protocol.read_report(report(rows), src=1, round=2, rules=RULES)
    with pytest.raises(WireFormatError, match="report from rank 1: REPORT for round 1"):
        protocol.read_report(report(rows, round=1), src=1, round=2, rules=RULES)


def state_msg(state, *, round=0, client=-1, n_tensors=None, codec_id=protocol.STATE_CODEC):
    payload, _ = protocol.state_payload(state)
    return frame(Kind.MEMORY, round=round, client=client, payload=payload, codec_id=codec_id,
                 n_tensors=len(state) if n_tensors is None else n_tensors)


# Named float32 arrays of any shape (the format of every start-up MEMORY).
STATE = {"w": MODEL["w"], "b.q": np.full((2, 4, 1), -0.5, np.float32)}
RUN = "ab" * 32  # a run identity (sha256 hex)


def test_start_up_memory_round_trips_and_is_checked():
    """MEMORY is start-up infrastructure only: a fresh run's identity, or a resumed
    rank's replica; client state never travels (no reader for it any more)."""
    assert not hasattr(protocol, "read_snapshot") and not hasattr(protocol, "SNAPSHOT")
    ident = state_msg(protocol.identity_payload(RUN))
    assert protocol.read_identity(ident, rank=1) == RUN
    replica = state_msg(MODEL)
    assert np.array_equal(protocol.read_restore(replica, rank=1, spec=SPEC)["b"], MODEL["b"])
    with pytest.raises(WireFormatError, match="rank 1, resume \\(round -1\\), replica of "
                                              "the global model: arrays .* are not the model's"):
        protocol.read_restore(state_msg(STATE), rank=1, spec=SPEC)
    for bad, message in ((state_msg(MODEL, round=4), "MEMORY for round 4"),
                         (state_msg(MODEL, client=3), "MEMORY for client 3")):
        with pytest.raises(WireFormatError, match=message):
            protocol.read_restore(bad, rank=1, spec=SPEC)
        with pytest.raises(WireFormatError, match=message):
            protocol.read_identity(bad, rank=1)
    with pytest.raises(WireFormatError, match="run identity: arrays .* expected exactly 'run'"):
        protocol.read_identity(replica, rank=1)
    with pytest.raises(WireFormatError, match="not bytes"):
        protocol.read_identity(state_msg({"run": np.full(32, 256, np.float32)}), rank=1)
    with pytest.raises(ValueError, match="hex digits"):
        protocol.identity_payload("abc")


@pytest.mark.parametrize("payload, n, message", [
    (b"", 0, "state payload of 0 bytes"),
    (struct.pack("<I", 1 << 20), 0, "declares 1048576 arrays"),
    (struct.pack("<IH", 1, 5) + b"ab", 1, "truncated name"),
    (struct.pack("<IH", 1, 2) + b"\xff\xfe" + bytes([0]) + b"\0" * 4, 1, "not UTF-8"),
    (struct.pack("<IH", 1, 0) + bytes([0]) + b"\0" * 4, 1, "is empty"),
    (struct.pack("<IH", 2, 1) + b"a" + bytes([0]) + struct.pack("<H", 1) + b"a" + bytes([0])
     + b"\0" * 8, 2, "repeated"),
    (struct.pack("<IH", 1, 1) + b"a" + bytes([9]) + b"\0" * 40, 1, "9 dimensions"),
    (struct.pack("<IH", 1, 1) + b"a" + bytes([1]) + struct.pack("<I", 3) + b"\0" * 8, 1,
     "hold 3 float32 values, the payload has 8 bytes"),
    (struct.pack("<IH", 1, 1) + b"a" + bytes([1]) + struct.pack("<I", 1)
     + struct.pack("<f", float("nan")), 1, "NaN or inf"),
    (protocol.state_payload(STATE)[0], 1, "MEMORY declares 1 arrays, its payload has 2"),
])
def test_malformed_compressor_states_are_refused(payload, n, message):
    buf = frame(Kind.MEMORY, round=0, client=-1, payload=payload, codec_id=protocol.STATE_CODEC,
                n_tensors=n)
    with pytest.raises(WireFormatError, match=message):
        protocol.read_restore(buf, rank=1, spec=SPEC)


@pytest.mark.parametrize("state, message", [
    ({"": np.zeros(1, np.float32)}, "names are printable"),
    ({"a\n": np.zeros(1, np.float32)}, "names are printable"),
    ({"a": np.zeros((1,) * 9, np.float32)}, "at most 8 dims"),
    ({"a": np.array([np.inf], np.float32)}, "NaN or inf"),
])
def test_a_sender_never_writes_a_state_the_reader_refuses(state, message):
    with pytest.raises(ValueError, match=message):
        protocol.state_payload(state)


def test_a_state_of_another_codec_is_refused():
    with pytest.raises(WireFormatError, match="codec id"):
        protocol.read_restore(state_msg(MODEL, codec_id=7), rank=1, spec=SPEC)
