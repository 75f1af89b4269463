"""What a run prints and records: the release's metric lines, warnings about ties, partial
results and interruptions, and the package versions for the JSON report."""
import importlib.metadata
import platform
import sys
from pathlib import Path


def result_label(result):
    return "mean-pooling" if result["temperature"] is None else \
        f"{result['aggregation']}, temp: {result['temperature']}"


def format_result_line(result, skipped_note=""):
    """The release's printed line, rounded: R@K and MedR to one decimal, MeanR to three."""
    rounded = {k: round(v, 3 if k == "MeanR" else 1) for k, v in result["t2v"].items()}
    return f"{rounded}  agg: {result_label(result)}{skipped_note}"


def print_results(results, note, num_queries):
    """The metric lines on stdout; failures and tie warnings on stderr."""
    for result in results:
        if "error" in result:
            print(f"error: {result['error']}  agg: {result_label(result)}", file=sys.stderr)
            continue
        print(format_result_line(result, note))
        if "t2v_averaging" in result:
            averaged = {k: round(v, 3 if k == "MeanR" else 1)
                        for k, v in result["t2v_averaging"].items()}
            print(f"warning: {result['t2v_tied_queries']} of {num_queries} queries tie their "
                  f"video's score with another video's, so the optimistic tie policy flatters "
                  f"this line; with ties averaged: {averaged}  agg: {result_label(result)}",
                  file=sys.stderr)


def partial_note(content):
    """The mark every metric line carries when videos were left out, and the counts."""
    kept_ids = set(content["video_ids"])
    num_queries = sum(v in kept_ids for v in content["query_video_ids"])
    counts = {"videos": len(content["video_ids"]), "queries": num_queries,
              "skipped_videos": len(content["skipped"]),
              "skipped_queries": len(content["query_video_ids"]) - num_queries}
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
