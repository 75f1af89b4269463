"""The JSON report of a search, one shape for `search_videos.py search --json` and the page's
API (`clip_hitchhiker.search.server`), so that the two cannot drift apart."""
from pathlib import Path


def search_report(index_folder, results, aggregate, temperature, exact):
    """results: VideoIndex.search / search_images output ([{"query" or "image", "hits"}])."""
    return {"index": str(Path(index_folder).resolve()), "aggregate": aggregate,
            "temperature": temperature, "exact": exact, "queries": results}
