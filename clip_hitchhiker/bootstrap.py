"""Bootstrap confidence intervals for retrieval metrics, from per-query ranks.

Resampling queries with replacement is, for each resample, a vector of counts c (how often each
query was drawn), so every metric is a weighted statistic of the fixed ranks r:
    R@K = 100 * c . [r <= K] / N,   MeanR = c . r / N,   MedR = the median of r weighted by c.
The same counts serve every aggregation, so intervals and differences are paired. Resamples run
in chunks, so memory stays at chunk * N whatever the number of resamples.
"""
import numpy as np

METRICS = ("R1", "R5", "R10", "R50", "MedR", "MeanR")
# The resample counts the command line accepts. Below MIN_RESAMPLES a 95 % interval is drawn
# from a handful of extreme values and moves with the seed; above MAX_RESAMPLES the resampled
# metrics kept for the percentiles (8 bytes x 6 metrics x 2 directions per resample and
# aggregation: 9.6 MB per aggregation at the maximum) and the time grow with no gain in an
# interval already stable to ~0.1 point.
MIN_RESAMPLES, MAX_RESAMPLES = 100, 100_000
DIFFERENCE_METRICS = ("R1", "R5", "R10")
_CHUNK_ELEMENTS = 1 << 22


def resample_counts(num_units, num_resamples, rng):
    """[num_resamples, num_units]: how often each unit is drawn in each resample of num_units
    draws with replacement. A transposed view of a contiguous [num_units, num_resamples] array,
    so that gathering units (for medians) reads contiguous rows."""
    draws = rng.integers(0, num_units, size=(num_resamples, num_units), dtype=np.int32)
    flat = draws.astype(np.int64) * num_resamples + np.arange(num_resamples)[:, None]
    unit_counts = np.bincount(flat.ravel(), minlength=num_resamples * num_units)
    return unit_counts.reshape(num_units, num_resamples).T


def weighted_metrics(ranks, counts, median="average"):
    """ranks: [N] 1-based ranks; counts: [B, N] draw counts (each row sums to N), best as
    resample_counts lays them out. returns: {metric: [B] values}, equal to
    metrics.ranks_to_metrics(resample, median) of each resample."""
    ranks = np.asarray(ranks, dtype=np.float64)
    num_units = len(ranks)
    unit_counts = np.ascontiguousarray(counts.T)  # no copy when counts come from resample_counts
    ks = (1, 5, 10, 50)
    # One product gives every R@K numerator and the rank sum.
    columns = np.stack([ranks <= k for k in ks] + [ranks], axis=1)  # [N, 5]
    sums = counts @ columns  # [B, 5]
    values = {f"R{k}": 100.0 * sums[:, i] / num_units for i, k in enumerate(ks)}
    values["MeanR"] = sums[:, -1] / num_units
    middle = [num_units // 2] if num_units % 2 else [num_units // 2 - 1, num_units // 2]
    if median == "lower":
        middle = middle[:1]
    values["MedR"] = np.mean(weighted_order_statistics(ranks, counts, unit_counts, middle),
                             axis=0)
    return values


def weighted_order_statistics(ranks, counts, unit_counts, positions):
    """The values at 0-based positions of each resample's sorted sample, [len(positions), B].

    A resample's order statistic lies within a few standard deviations (at most sqrt(N) / 2
    positions each) of the same position in the original sorted ranks, so only a window of
    sorted units is accumulated, the draws below it coming from one product. Rows that fall
    outside the window (8 standard deviations: never, in practice) are redone over all units.
    """
    num_units = len(ranks)
    order = np.argsort(ranks, kind="stable")
    half_width = int(4 * np.sqrt(num_units)) + 8
    low = max(0, min(positions) - half_width)
    high = min(num_units, max(positions) + half_width + 1)
    below = np.zeros(num_units)
    below[order[:low]] = 1
    start = counts @ below  # [B] draws of the units below the window
    cumulative = start + np.cumsum(unit_counts[order[low:high]], axis=0)  # [W, B]
    results = []
    for position in positions:
        index = low + (cumulative <= position).sum(axis=0)
        outside = (start > position) | (index >= high)
        if outside.any():
            full = np.cumsum(unit_counts[order][:, outside], axis=0)
            index[outside] = (full <= position).sum(axis=0)
        results.append(ranks[order][index])
    return np.stack(results)


def bootstrap(rank_sets, num_resamples, seed=0, baseline=None, confidence=0.95,
              t2v_median="average"):
    """Percentile intervals of every metric, and paired differences against a baseline.

    rank_sets: {label: {"t2v": [Q] ranks, "v2t": [V] ranks}}, every label over the same queries
        and videos in the same order; baseline: the label the others are compared with;
        t2v_median: how the t2v MedR takes an even count's middle (metrics.ranks_to_metrics).
    returns: {"resamples", "seed", "confidence", "intervals": {label: {direction: {metric:
        [low, high]}}}, "differences": {label: {metric: {"difference", "interval",
        "p_value"}}}} with t2v R1/R5/R10 differences (label - baseline), two-sided p-values.
    """
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    rng = np.random.default_rng(seed)
    tails = [50 * (1 - confidence), 100 - 50 * (1 - confidence)]
    samples = {label: {} for label in rank_sets}
    for direction in ("t2v", "v2t"):
        num_units = {len(ranks[direction]) for ranks in rank_sets.values()}
        if len(num_units) != 1:
            raise ValueError(f"every aggregation must rank the same {direction} queries, got "
                             f"counts {sorted(num_units)}")
        num_units = num_units.pop()
        chunk = max(1, _CHUNK_ELEMENTS // num_units)
        parts = {label: [] for label in rank_sets}
        for start in range(0, num_resamples, chunk):
            counts = resample_counts(num_units, min(chunk, num_resamples - start), rng)
            for label, ranks in rank_sets.items():
                parts[label].append(weighted_metrics(
                    ranks[direction], counts, t2v_median if direction == "t2v" else "average"))
        for label in rank_sets:
            samples[label][direction] = {m: np.concatenate([p[m] for p in parts[label]])
                                         for m in METRICS}
    intervals = {label: {d: {m: np.percentile(v, tails).tolist() for m, v in by_metric.items()}
                         for d, by_metric in by_direction.items()}
                 for label, by_direction in samples.items()}
    differences = {}
    for label in rank_sets:
        if baseline is None or label == baseline:
            continue
        differences[label] = {m: _paired_difference(rank_sets, samples, label, baseline, m,
                                                     tails) for m in DIFFERENCE_METRICS}
    return {"resamples": num_resamples, "seed": seed, "confidence": confidence,
            "intervals": intervals, "differences": differences}


def _paired_difference(rank_sets, samples, label, baseline, metric, tails):
    resampled = samples[label]["t2v"][metric] - samples[baseline]["t2v"][metric]
    k = int(metric[1:])
    observed = 100.0 * (np.mean(np.asarray(rank_sets[label]["t2v"]) <= k)
                        - np.mean(np.asarray(rank_sets[baseline]["t2v"]) <= k))
    return {"difference": float(observed), "interval": np.percentile(resampled, tails).tolist(),
            "p_value": two_sided_p_value(resampled)}


def two_sided_p_value(resampled):
    """Twice the smaller share of resampled differences on either side of zero (at most 1)."""
    return float(min(1.0, 2 * min(np.mean(resampled <= 0), np.mean(resampled >= 0))))


def bootstrap_means(value_sets, num_resamples, seed=0, baseline=None, confidence=0.95):
    """Percentile intervals of metrics that are means over the queries (such as R@1 at an IoU,
    100 * [iou >= m], or mIoU), and paired differences against a baseline; the same resamples
    of the queries serve every label, as in bootstrap().

    value_sets: {label: {metric: [N] per-query values}}, every label with the same metrics over
        the same N queries in the same order; baseline: the label the others are compared with.
    returns: {"resamples", "seed", "confidence", "intervals": {label: {metric: [low, high]}},
        "differences": {label: {metric: {"difference", "interval", "p_value"}}}}.
    """
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    labels = list(value_sets)
    metrics = list(value_sets[labels[0]])
    columns = {label: np.stack([np.asarray(value_sets[label][m], dtype=np.float64)
                                for m in metrics], axis=1) for label in labels}  # [N, M]
    if len({c.shape for c in columns.values()}) != 1:
        raise ValueError(f"every label must score the same queries and metrics, got shapes "
                         f"{sorted({c.shape for c in columns.values()})}")
    num_units = len(columns[labels[0]])
    rng = np.random.default_rng(seed)
    tails = [50 * (1 - confidence), 100 - 50 * (1 - confidence)]
    chunk = max(1, _CHUNK_ELEMENTS // num_units)
    parts = {label: [] for label in labels}
    for start in range(0, num_resamples, chunk):
        counts = resample_counts(num_units, min(chunk, num_resamples - start), rng)
        for label in labels:
            parts[label].append(counts @ columns[label] / num_units)  # [B, M]
    samples = {label: np.concatenate(parts[label]) for label in labels}
    intervals = {label: {m: np.percentile(samples[label][:, i], tails).tolist()
                         for i, m in enumerate(metrics)} for label in labels}
    differences = {}
    for label in labels:
        if baseline is None or label == baseline:
            continue
        observed = columns[label].mean(axis=0) - columns[baseline].mean(axis=0)
        resampled = samples[label] - samples[baseline]
        differences[label] = {m: {"difference": float(observed[i]),
                                  "interval": np.percentile(resampled[:, i], tails).tolist(),
                                  "p_value": two_sided_p_value(resampled[:, i])}
                              for i, m in enumerate(metrics)}
    return {"resamples": num_resamples, "seed": seed, "confidence": confidence,
            "intervals": intervals, "differences": differences}
