"""The JSON report of a search, one shape and one rounding for `search_videos.py search --json`
and the page's API (`clip_hitchhiker.search.server`), so that the two cannot drift apart."""
from pathlib import Path


def search_report(index_folder, results, aggregate, temperature, exact):
    """results: VideoIndex.search / search_images output ([{"query" or "image", "hits"}])."""
    return {"index": str(Path(index_folder).resolve()), "aggregate": aggregate,
            "temperature": temperature, "exact": exact, "queries": results}


SECONDS_KEYS = ("start", "end", "peak", "duration", "times")


def rounded_for_print(report):
    """A copy of a search or info report with every value under SECONDS_KEYS rounded to the
    millisecond and every "score" to 6 decimals, for printing: the digits past those are float
    noise (47.980000000000004), finer than frame times or score differences mean. The Python API
    keeps full precision."""
    if isinstance(report, list):
        return [rounded_for_print(item) for item in report]
    if not isinstance(report, dict):
        return report
    return {key: _rounded(value, 3) if key in SECONDS_KEYS else
            _rounded(value, 6) if key == "score" else rounded_for_print(value)
            for key, value in report.items()}


def _rounded(value, decimals):
    if isinstance(value, list):
        return [_rounded(v, decimals) for v in value]
    return round(value, decimals) if isinstance(value, float) else value
