import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmpi.aggregate import StreamingFedAvg


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_streaming_equals_batch_weighted_mean(weights, seed):
    rng = np.random.default_rng(seed)
    clients = [{"w": rng.normal(size=(3, 4)).astype(np.float32)} for _ in weights]
    agg = StreamingFedAvg()
    for c, n in zip(clients, weights):
        agg.add(c, n)
    expected = sum(c["w"].astype(np.float64) * n for c, n in zip(clients, weights)) / sum(weights)
    np.testing.assert_allclose(agg.result()["w"], expected.astype(np.float32), rtol=1e-6)


def test_update_target_adds_reference():
    ref = {"w": np.ones(4, np.float32)}
    agg = StreamingFedAvg(reference=ref)
    agg.add({"w": np.full(4, 2.0, np.float32)}, 1)
    agg.add({"w": np.full(4, 4.0, np.float32)}, 3)
    np.testing.assert_array_equal(agg.result()["w"], np.full(4, 1 + 3.5, np.float32))


def test_rejects_mismatch_and_empty():
    agg = StreamingFedAvg()
    with pytest.raises(ValueError):
        agg.result()
    agg.add({"a": np.zeros(2, np.float32)}, 1)
    with pytest.raises(ValueError):
        agg.add({"b": np.zeros(2, np.float32)}, 1)
    with pytest.raises(ValueError):
        agg.add({"a": np.zeros(2, np.float32)}, 0)
