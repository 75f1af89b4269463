"""What a run prints and records: the release's metric lines, warnings about ties, partial
results and interruptions, the published figures, bootstrap lines, the run manifest and the
comparison with an earlier report, and the package versions."""
import hashlib
import importlib.metadata
import json
import platform
import sys
import warnings
from pathlib import Path


def silence_third_party_notices():
    """Deprecation notices a user of the command lines cannot act on: openai-clip's
    pkg_resources import and torch.jit's (clip.load reads TorchScript checkpoints)."""
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    warnings.filterwarnings("ignore", message="`torch.jit", category=FutureWarning)


def result_label(result):
    return "mean-pooling" if result["temperature"] is None else \
        f"{result['aggregation']}, temp: {result['temperature']}"


def rounded(metrics):
    """The release's rounding: R@K and MedR to one decimal, MeanR to three."""
    return {k: round(v, 3 if k == "MeanR" else 1) for k, v in metrics.items()}


def signed(differences):
    """Differences of metrics as the release rounds them, with their sign: "{'R1': +0.2, ...}"."""
    parts = ", ".join(f"'{k}': {v:+.{3 if k == 'MeanR' else 1}f}" for k, v in differences.items())
    return f"{{{parts}}}"


# A classification result's metrics, in the order they print: Charades' mAP, Kinetics' accuracies.
CLASSIFICATION_METRICS = ("mAP", "top1", "top5", "mean_class_accuracy")


def classification_metrics(result):
    """{metric: value} of a classification result ({} for retrieval)."""
    return {k: result[k] for k in CLASSIFICATION_METRICS if k in result}


def format_result_line(result, skipped_note=""):
    """The release's printed line, rounded: R@K and MedR to one decimal, MeanR to three (for
    classification, the same form with the mAP or the accuracies, to one decimal)."""
    shown = classification_metrics(result)
    metrics = {k: round(v, 1) for k, v in shown.items()} if shown else rounded(result["t2v"])
    return f"{metrics}  agg: {result_label(result)}{skipped_note}"


def print_results(results, note, num_queries):
    """The metric lines on stdout; failures and tie warnings on stderr."""
    for result in results:
        if "error" in result:
            print(f"error: {result['error']}  agg: {result_label(result)}", file=sys.stderr)
            continue
        print(format_result_line(result, note))
        if "t2v_averaging" in result:
            averaged = rounded(result["t2v_averaging"])
            print(f"warning: {result['t2v_tied_queries']} of {num_queries} queries tie their "
                  f"video's score with another video's, so the optimistic tie policy flatters "
                  f"this line; with ties averaged: {averaged}  agg: {result_label(result)}",
                  file=sys.stderr)


def partial_note(content):
    """The mark every metric line carries when videos were left out, and the counts."""
    kept_ids = set(content["video_ids"])
    if content.get("task") == "classification":  # the queries are classes: none left out
        num_queries = len(content["captions"])
    else:
        num_queries = sum(v in kept_ids for v in content["query_video_ids"])
    counts = {"videos": len(content["video_ids"]), "queries": num_queries,
              "skipped_videos": len(content["skipped"]),
              "skipped_queries": len(content["captions"]) - num_queries}
    note = "" if not content["skipped"] else (
        f"  [partial: {counts['skipped_videos']} bad video(s) and {counts['skipped_queries']} "
        "queries left out, not comparable with the benchmark]")
    return note, counts


def package_versions():
    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "openai-clip", "decord", "numpy", "pandas"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def interruption_note(data_root):
    """What a Ctrl-C leaves behind: a partial download to resume, or nothing."""
    part = Path(data_root) / "MSRVTT.zip.part"
    if part.is_file():
        return (f"interrupted: the partial download {part} ({part.stat().st_size} bytes) is kept; "
                "run the same command to resume it")
    return "interrupted: nothing was kept (the cache and outputs are written only when complete)"


# ----------------------------------------------------------------------------------------------
# Published figures

# Bain et al., arXiv 2205.08508: MSR-VTT 1k-A text-to-video, OpenAI ViT-B/16, 16 frames.
PUBLISHED = {
    "mean-pooling": {"R1": 33.3, "R5": 55.0, "R10": 65.2, "R50": 84.8, "MedR": 4.0,
                     "MeanR": 38.403},
    "query-scoring, temp: 0.1": {"R1": 34.4, "R5": 56.1, "R10": 65.3, "R50": 85.5, "MedR": 4.0,
                                 "MeanR": 37.602},
}
# The sha256 of OpenAI's ViT-B-16.pt, as its download URL gives it.
OPENAI_VIT_B16_SHA256 = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"


def is_release_configuration(*, dataset, split, model_id, num_frames, antialias, temperatures,
                             partial, backend="clip"):
    """Whether a run is set up as the paper's figures were made, so that they compare.
    split None is the dataset's default (for MSR-VTT, jsfusion)."""
    model_is_vit_b16 = model_id in ("ViT-B/16", f"sha256:{OPENAI_VIT_B16_SHA256}")
    return (dataset == "msrvtt" and split in (None, "jsfusion") and backend == "clip"
            and model_is_vit_b16
            and num_frames == 16 and not antialias and 0.1 in temperatures and not partial)


def published_comparison(results):
    """{label: {"published", "difference"}} for the aggregations the paper reports."""
    comparison = {}
    for result in results:
        label = result_label(result)
        if label in PUBLISHED and "t2v" in result:
            comparison[label] = {"published": PUBLISHED[label], "difference": {
                k: result["t2v"][k] - v for k, v in PUBLISHED[label].items()}}
    return comparison


def print_published(comparison):
    print("published (Bain et al., arXiv 2205.08508: MSR-VTT 1k-A, ViT-B/16, 16 frames):")
    for label, entry in comparison.items():
        print(f"{entry['published']}  agg: {label}")
        print(f"this run minus published: {signed(entry['difference'])}  agg: {label}")


# ----------------------------------------------------------------------------------------------
# Bootstrap


def format_bootstrap_line(label, bootstrap, num_queries):
    """One line: the t2v intervals of an aggregation, and its paired difference from mean
    pooling (R1, R5, R10: difference [interval] and p-value) when it has one."""
    def fmt(interval, signed=False):
        sign = "+" if signed else ""
        return f"[{interval[0]:{sign}.1f}, {interval[1]:{sign}.1f}]"

    intervals = bootstrap["intervals"][label]["t2v"]
    text = ", ".join(f"{m} {fmt(interval)}" for m, interval in intervals.items())
    line = (f"{100 * bootstrap['confidence']:.0f}% CI ({bootstrap['resamples']} resamples of "
            f"{num_queries} queries, seed {bootstrap['seed']}): {text}")
    if label in bootstrap["differences"]:
        parts = [f"{m} {d['difference']:+.1f} {fmt(d['interval'], True)} p={d['p_value']:.3g}"
                 for m, d in bootstrap["differences"][label].items()]
        line += "; minus mean-pooling: " + ", ".join(parts)
    return f"{line}  agg: {label}"


# ----------------------------------------------------------------------------------------------
# Manifest and comparison of two runs


def run_manifest(content):
    """What the results were computed from: the split's digest (query videos and captions in
    order) and, for each video, the frame count the decoder reported, the sampled indices and
    the resolution."""
    split = json.dumps([content["query_video_ids"], content["captions"]]).encode()
    return {"split_sha256": hashlib.sha256(split).hexdigest(), "videos": content["decoded"]}


# The settings most likely to explain a difference between two runs: (name, where in a report).
COMPARED_SETTINGS = (
    ("dataset", ("config", "dataset")), ("split", ("config", "split")),
    ("backend", ("model", "backend")), ("model", ("config", "model")),
    ("weights", ("model", "pretrained")), ("num_frames", ("config", "num_frames")),
    ("antialias", ("preprocess", "antialias")), ("preprocess_on", ("preprocess", "on")),
    ("prompts", ("config", "prompt")), ("paragraph", ("config", "paragraph")))
_MISSING = object()


def compare_reports(earlier, current, earlier_name, limit=10):
    """Lines that say how current differs from an earlier report: first the settings that
    differ (model, weights, preprocessing, prompts...), then split, versions, metrics per
    aggregation (and those in only one run), and the videos decoded differently.

    earlier may be old, hand-edited or incomplete: what it lacks is said to be not recorded,
    never guessed, and nothing in it can make this fail; current is this run's report."""
    lines = [f"compared with {earlier_name}:"] + _setting_differences(earlier, current)
    old_manifest = _field(earlier, ("manifest",), {})
    new_manifest = current["manifest"]
    old_split = _field(old_manifest, ("split_sha256",), None)
    if old_split is None:
        lines.append("split: not recorded in the earlier report")
    else:
        same = old_split == new_manifest["split_sha256"]
        lines.append(f"split: {'same' if same else 'DIFFERENT'} (sha256 "
                     f"{new_manifest['split_sha256'][:12]}…)")
    old_versions = _field(earlier, ("versions",), None)
    if not isinstance(old_versions, dict):
        lines.append("versions: not recorded in the earlier report")
    else:
        changed = [f"{name} {old_versions.get(name)} -> {version}"
                   for name, version in current["versions"].items()
                   if old_versions.get(name) != version]
        if changed:
            lines.append("versions: " + ", ".join(changed))
    lines += _metric_differences(_field(earlier, ("results",), []), current["results"])
    old_videos = _field(old_manifest, ("videos",), None)
    if not isinstance(old_videos, dict):
        lines.append("videos decoded: not recorded in the earlier report")
    else:
        lines += _video_differences(old_videos, new_manifest["videos"], limit)
    return lines


def _field(report, path, default=_MISSING):
    """report[path[0]][path[1]]..., or default where a level is missing or not a dict."""
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return default
        report = report[key]
    return report


def _setting_differences(earlier, current):
    """The COMPARED_SETTINGS that differ, as one line, and those the earlier report lacks."""
    differ, unrecorded = [], []
    for name, path in COMPARED_SETTINGS:
        now, before = _field(current, path), _field(earlier, path)
        if now is _MISSING:
            continue
        if before is _MISSING:
            unrecorded.append(name)
        elif before != now:
            differ.append(f"{name} {before!r} -> {now!r}")
    lines = []
    if differ:
        lines.append("settings DIFFER (the likely cause of any difference below): "
                     + "; ".join(differ))
    if unrecorded:
        lines.append(f"not recorded in the earlier report, so not compared: "
                     f"{', '.join(unrecorded)}")
    return lines


def _metric_differences(old_results, new_results):
    """Per aggregation in both runs: this run minus the earlier one (R@K, MedR, MeanR of t2v,
    or mAP); then the aggregations (temperatures) present in only one of them."""
    old_by_label = {}
    for result in old_results if isinstance(old_results, list) else []:
        if isinstance(result, dict) and {"aggregation", "temperature"} <= set(result):
            old_by_label[result_label(result)] = result
    lines = []
    for result in new_results:
        label = result_label(result)
        if label not in old_by_label:
            continue
        new_metrics, old_metrics = _metrics_of(result), _metrics_of(old_by_label[label])
        common = {k: v - old_metrics[k] for k, v in new_metrics.items()
                  if _is_number(old_metrics.get(k))}
        if common:
            lines.append(f"this run minus earlier: {signed(common)}  agg: {label}")
        elif new_metrics:
            lines.append(f"cannot compare agg: {label}: the earlier report holds no such "
                         "metrics for it (a failed aggregation, or an edited report)")
    new_labels = {result_label(r) for r in new_results}
    only_old = [label for label in old_by_label if label not in new_labels]
    only_new = [label for label in (result_label(r) for r in new_results)
                if label not in old_by_label]
    if only_old or only_new:
        lines.append(f"aggregations in only one run: earlier only {only_old}, this run only "
                     f"{only_new}")
    return lines


def _metrics_of(result):
    """{metric: value} of one result entry: its t2v metrics, or its classification metrics;
    {} if it has none."""
    if classification_metrics(result):
        return classification_metrics(result)
    return result["t2v"] if isinstance(result.get("t2v"), dict) else {}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _video_differences(old_videos, new_videos, limit):
    changed = []
    for video_id in sorted(set(old_videos) & set(new_videos)):
        old, new = old_videos[video_id], new_videos[video_id]
        # Reports from before the decoder was recorded were all decord's.
        if isinstance(old, dict):
            old, new = {"decoder": "decord", **old}, {"decoder": "decord", **new}
        fields = [f"{field} {_short(old[field])} -> {_short(new[field])}"
                  for field in ("decoder", "frames", "indices", "resolution")
                  if isinstance(old, dict) and field in old and old[field] != new[field]]
        if fields:
            changed.append(f"  {video_id}: " + "; ".join(fields))
    only_old = sorted(set(old_videos) - set(new_videos))
    only_new = sorted(set(new_videos) - set(old_videos))
    lines = [f"videos decoded differently: {len(changed)} of "
             f"{len(set(old_videos) & set(new_videos))}"] + changed[:limit]
    if len(changed) > limit:
        lines.append(f"  … and {len(changed) - limit} more")
    if only_old or only_new:
        lines.append(f"videos in only one run: {len(only_old)} only earlier (e.g. "
                     f"{only_old[:3]}), {len(only_new)} only now (e.g. {only_new[:3]})")
    return lines


def _short(value):
    if isinstance(value, list) and len(value) > 6:
        return f"[{', '.join(map(str, value[:3]))}, …, {value[-1]}] ({len(value)})"
    return str(value)
