"""`fedmpi bench codec` on a tiny model: rows are complete and consistent."""

import argparse
import json

import numpy as np

from fedmpi import bench, wire
from fedmpi.bench import codec


def test_rows_are_consistent(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "rows.json"
    args = parser.parse_args(["codec", "--params", "3000", "--repeat", "1", "--json", str(out),
                              "--only", "dense", "p0.9+sparse+zstd", "p0.9+u8+sparse+zstd"])
    assert bench.main(args) == 0
    rows = json.loads(out.read_text())
    assert [r["pipeline"] for r in rows] == ["dense", "p0.9+sparse+zstd", "p0.9+u8+sparse+zstd"]
    for r in rows:
        assert r["dense_bytes"] == 4 * r["numel"]
        assert np.isclose(r["ratio"], r["wire_bytes"] / r["dense_bytes"])
        assert np.isclose(r["encode_gbps"], r["dense_bytes"] / r["encode_s"] / 1e9)
        assert np.isclose(r["encode_vs_memcpy"] * r["memcpy_gbps"], r["encode_gbps"], rtol=2)
        assert 0 < r["nnz"] <= r["numel"] and r["roundtrip_exact"]
    dense, p9 = rows[0], rows[1]
    assert dense["wire_bytes"] == wire.HEADER_SIZE + dense["dense_bytes"] + 4 + 3 * 20 + 16 + \
        20 * len(codec.make_model(3000))
    assert dense["max_abs_err"] == 0 and p9["nnz"] < 0.11 * p9["numel"]
    assert rows[2]["wire_bytes"] < p9["wire_bytes"] < dense["wire_bytes"]
    printed = capsys.readouterr().out
    assert "p0.9+u8+sparse+zstd" in printed and "target" in printed


def test_synthetic_model_is_trained_like():
    ts = codec.make_model(50_000, seed=1)
    assert 30_000 < sum(t.size for t in ts.values()) < 80_000
    w = np.concatenate([t.ravel() for k, t in ts.items() if t.ndim >= 2])
    assert np.count_nonzero(w) == w.size and len(np.unique(w)) > 0.9 * w.size
    kurtosis = np.mean((w - w.mean()) ** 4) / np.var(w) ** 2
    assert kurtosis > 3.0  # heavier tails than Gaussian init
