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


def format_result_line(result, skipped_note=""):
    """The release's printed line, rounded: R@K and MedR to one decimal, MeanR to three (for
    classification, the same form with the mAP)."""
    if "mAP" in result:
        return f"{{'mAP': {round(result['mAP'], 1)}}}  agg: {result_label(result)}{skipped_note}"
    return f"{rounded(result['t2v'])}  agg: {result_label(result)}{skipped_note}"


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


def compare_reports(earlier, current, earlier_name, limit=10):
    """Lines that say how current differs from an earlier report: split, versions, metrics per
    aggregation, and the videos decoded differently (decoder, frame count, indices,
    resolution)."""
    lines = [f"compared with {earlier_name}:"]
    old_manifest, new_manifest = earlier.get("manifest", {}), current["manifest"]
    same_split = old_manifest.get("split_sha256") == new_manifest["split_sha256"]
    lines.append(f"split: {'same' if same_split else 'DIFFERENT'} (sha256 "
                 f"{new_manifest['split_sha256'][:12]}…)")
    versions = [f"{name} {earlier.get('versions', {}).get(name)} -> {version}"
                for name, version in current["versions"].items()
                if earlier.get("versions", {}).get(name) != version]
    if versions:
        lines.append("versions: " + ", ".join(versions))
    old_results = {result_label(r): r for r in earlier.get("results", []) if "t2v" in r}
    for result in current["results"]:
        label = result_label(result)
        if label in old_results and "t2v" in result:
            old = old_results[label]["t2v"]
            difference = signed({k: v - old[k] for k, v in result["t2v"].items()})
            lines.append(f"this run minus earlier: {difference}  agg: {label}")
    lines += _video_differences(old_manifest.get("videos", {}), new_manifest["videos"], limit)
    return lines


def _video_differences(old_videos, new_videos, limit):
    changed = []
    for video_id in sorted(set(old_videos) & set(new_videos)):
        old, new = old_videos[video_id], new_videos[video_id]
        # Reports from before the decoder was recorded were all decord's.
        old, new = {"decoder": "decord", **old}, {"decoder": "decord", **new}
        fields = [f"{field} {_short(old[field])} -> {_short(new[field])}"
                  for field in ("decoder", "frames", "indices", "resolution")
                  if old[field] != new[field]]
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
