"""Time of --bootstrap N against its floor, in one run: drawing every resample's queries (N x Q
random integers for t2v, N x V for v2t), which any bootstrap must do. Also the direct way
(index the ranks by a resample's draws, then metrics.ranks_to_metrics) on a few resamples,
which must give the same values, with its time scaled to N.

Per-query ranks are synthetic (a third at rank 1, the rest log-uniform up to 1,000), for
mean pooling and each temperature, over 1k-A's 1,000 queries and 1,000 videos.

    python bench/bench_bootstrap.py             # 10,000 resamples, best of 5
    python bench/bench_bootstrap.py --quick     # small sizes, a smoke run
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from clip_hitchhiker.bootstrap import bootstrap, resample_counts, weighted_metrics  # noqa: E402
from metrics import ranks_to_metrics  # noqa: E402


def synthetic_ranks(num_units, seed):
    """[num_units] 1-based ranks: a third at 1, the rest log-uniform over [2, num_units]."""
    rng = np.random.default_rng(seed)
    spread = np.exp(rng.uniform(np.log(2), np.log(num_units), num_units)).astype(int)
    return np.where(rng.random(num_units) < 1 / 3, 1, spread)


def rank_sets(labels, num_units):
    """{label: {"t2v": ranks, "v2t": ranks}}, each label its own seeded ranks."""
    return {label: {"t2v": synthetic_ranks(num_units, 2 * i),
                    "v2t": synthetic_ranks(num_units, 2 * i + 1)}
            for i, label in enumerate(labels)}


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def draw_floor(num_units, num_resamples, seed=0):
    """The draws alone: each direction's [num_resamples, num_units] query indices."""
    rng = np.random.default_rng(seed)
    for _ in ("t2v", "v2t"):
        rng.integers(0, num_units, size=(num_resamples, num_units), dtype=np.int32)


def direct_agreement(ranks, num_resamples, seed=0):
    """Largest difference between weighted_metrics and ranks_to_metrics of the same draws,
    and the direct way's time. returns: (difference, seconds)."""
    num_units = len(ranks)
    counts = resample_counts(num_units, num_resamples, np.random.default_rng(seed))
    fast = weighted_metrics(ranks, counts)
    start = time.perf_counter()
    draws = np.random.default_rng(seed).integers(0, num_units, size=(num_resamples, num_units),
                                                 dtype=np.int32)
    direct = [ranks_to_metrics(ranks[row]) for row in draws]
    seconds = time.perf_counter() - start
    difference = max(abs(fast[m][i] - values[m]) for i, values in enumerate(direct)
                     for m in values)
    return difference, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    num_units, num_resamples, direct_resamples = (100, 200, 20) if args.quick else \
        (1000, 10000, 500)
    print(f"{num_units} queries and videos, {num_resamples} resamples, best of {args.repeats}")
    floor = best_time(lambda: draw_floor(num_units, num_resamples), args.repeats)
    print(f"floor (the draws alone): {floor:.3f} s")
    for labels in (["mean-pooling", "tau=0.1"], ["mean-pooling", "tau=0.1", "tau=0.01"]):
        sets = rank_sets(labels, num_units)
        seconds = best_time(lambda: bootstrap(sets, num_resamples, baseline="mean-pooling"),
                            args.repeats)
        print(f"bootstrap, {len(labels)} aggregations: {seconds:.3f} s ({seconds / floor:.2f}x "
              f"floor)")
    difference, direct_s = direct_agreement(rank_sets(["x"], num_units)["x"]["t2v"],
                                            direct_resamples)
    # The 2-aggregation bootstrap's work: every resample, both aggregations, both directions.
    scaled_s = direct_s / direct_resamples * num_resamples * 2 * 2
    print(f"direct (ranks indexed by the draws, ranks_to_metrics): {direct_resamples} resamples "
          f"in {direct_s:.3f} s, {scaled_s:.2f} s scaled to the 2-aggregation bootstrap's work; "
          f"max |difference| from the bootstrap's values {difference:.1e}")


if __name__ == "__main__":
    main()
