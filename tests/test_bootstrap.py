"""Bootstrap intervals: the vectorised counts equal resampling by hand, seeded and paired."""
import time

import numpy as np
import pytest

from clip_hitchhiker.bootstrap import bootstrap, resample_counts, weighted_metrics
from metrics import ranks_to_metrics


def test_counts_are_draws_with_replacement():
    counts = resample_counts(7, 50, np.random.default_rng(0))
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all() and counts.min() >= 0
    draws = np.random.default_rng(0).integers(0, 7, size=(50, 7), dtype=np.int32)
    assert (counts == np.stack([np.bincount(row, minlength=7) for row in draws])).all()


@pytest.mark.parametrize("num_units", [7, 8, 2000])  # odd and even medians; a narrow window
def test_weighted_metrics_equal_metrics_of_each_resample(num_units):
    rng = np.random.default_rng(1)
    ranks = rng.integers(1, 60, num_units).astype(float)
    ranks[0] = 2.5  # a tie-averaged rank
    counts = resample_counts(num_units, 40, rng)
    values = weighted_metrics(ranks, counts)
    for b in range(40):
        resample = np.repeat(ranks, counts[b])
        expected = ranks_to_metrics(resample)
        for metric, value in expected.items():
            assert values[metric][b] == pytest.approx(value, abs=1e-12)


def test_seeded_paired_and_sensible():
    rng = np.random.default_rng(2)
    base = rng.integers(1, 40, 300).astype(float)
    better = np.where(rng.random(300) < 0.2, 1.0, base)  # some queries move to the top
    sets = {"mean-pooling": {"t2v": base, "v2t": base[:200]},
            "query-scoring 0.1": {"t2v": better, "v2t": base[:200]}}
    first = bootstrap(sets, 2000, seed=5, baseline="mean-pooling")
    assert first == bootstrap(sets, 2000, seed=5, baseline="mean-pooling")
    assert first != bootstrap(sets, 2000, seed=6, baseline="mean-pooling")
    low, high = first["intervals"]["mean-pooling"]["t2v"]["R1"]
    point = ranks_to_metrics(base)["R1"]
    assert low < point < high
    difference = first["differences"]["query-scoring 0.1"]["R1"]
    assert difference["difference"] == pytest.approx(100 * (np.mean(better <= 1)
                                                             - np.mean(base <= 1)))
    # better is never worse than base, query by query: every paired resample is >= 0.
    assert difference["interval"][0] >= 0
    assert difference["p_value"] < 0.05
    # Identical rankings: no difference at all, p = 1.
    same = bootstrap({"a": sets["mean-pooling"], "b": sets["mean-pooling"]}, 500, baseline="a")
    assert same["differences"]["b"]["R5"] == {"difference": 0.0, "interval": [0.0, 0.0],
                                              "p_value": 1.0}


def test_ten_thousand_resamples_of_1k_a_are_quick():
    rng = np.random.default_rng(3)
    sets = {f"agg{i}": {"t2v": rng.integers(1, 1000, 1000).astype(float),
                        "v2t": rng.integers(1, 1000, 1000).astype(float)} for i in range(3)}
    start = time.perf_counter()
    result = bootstrap(sets, 10_000, baseline="agg0")
    elapsed = time.perf_counter() - start
    assert len(result["intervals"]) == 3
    assert elapsed < 10  # a generous bound for a loaded CI machine; bench figures in README


def test_mismatched_queries_are_refused():
    with pytest.raises(ValueError, match="same t2v queries"):
        bootstrap({"a": {"t2v": np.ones(3), "v2t": np.ones(2)},
                   "b": {"t2v": np.ones(4), "v2t": np.ones(2)}}, 10)


@pytest.mark.parametrize("num_units", [8, 2000])
def test_weighted_lower_median_equals_metrics_of_each_resample(num_units):
    rng = np.random.default_rng(3)
    ranks = rng.integers(1, 60, num_units).astype(float)
    counts = resample_counts(num_units, 40, rng)
    values = weighted_metrics(ranks, counts, median="lower")
    for b in range(40):
        expected = ranks_to_metrics(np.repeat(ranks, counts[b]), median="lower")
        assert values["MedR"][b] == expected["MedR"]
    sets = {"a": {"t2v": ranks, "v2t": ranks}}
    lower = bootstrap(sets, 200, seed=1, t2v_median="lower")["intervals"]["a"]
    average = bootstrap(sets, 200, seed=1)["intervals"]["a"]
    assert lower["v2t"] == average["v2t"]  # v2t keeps the average median
