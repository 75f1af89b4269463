"""The two-stage search (FAISS candidates, then exact query-scoring) against the exhaustive search,
on synthetic 512-d frame embeddings with cluster structure, written as a real index.

Each video has a main topic (most frames) and a secondary topic (a segment of ~20 % of its
frames); frames are topic + a per-video offset + noise, plus a direction all embeddings share
(as CLIP's do). Half the queries name a video's main topic, half a secondary one. Reported per
size: build time, disk, the reader's RAM beyond memory-mapped files (RssAnon), latency p50/p95
for one query and per query in batches of 100, recall@10 of the two stages against the
exhaustive search (--exact), and the exhaustive search's latency: the floor the stages beat.

    python bench/bench_search.py --sizes 10k 100k --runs 3
    python bench/bench_search.py --sizes 1M --runs 1      # ~16 GB of disk; deleted after
    python bench/bench_search.py --quick                  # a smoke run
    python bench/bench_search.py --sizes 100k --runs 1 --keep /tmp/i100k   # build, keep it
    python bench/bench_search.py --sizes 100k --runs 3 --reuse /tmp/i100k  # fresh readers only
    python bench/bench_search.py --sizes 10k --runs 3 --page   # + the search page's latency
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from clip_hitchhiker.search.candidate_index import STAGE1_TYPES  # noqa: E402
from clip_hitchhiker.search.video_index import DEFAULT_CANDIDATES  # noqa: E402

SIZES = {"quick": (2_000, 20), "10k": (10_000, 60), "100k": (100_000, 60),
         "1M": (1_000_000, 16)}
DIM, TOPICS, SECONDARY_SHARE = 512, 2000, 0.2
BATCH = 100
DISK_LIMIT = 25e9


def synthetic_videos(first, count, frames, seed=0):
    """Videos first..first+count-1: (float16 [count, frames, DIM], main topics, second topics).
    Deterministic per video range (each batch has its own generator)."""
    import torch

    rng = np.random.default_rng([seed, first])
    generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    topics = torch.from_numpy(_topics(seed))
    main = rng.integers(0, TOPICS, count)
    second = rng.integers(0, TOPICS, count)
    segment = max(1, int(frames * SECONDARY_SHARE))
    start = rng.integers(0, frames - segment + 1, count)
    which = np.where((np.arange(frames)[None] >= start[:, None]) &
                     (np.arange(frames)[None] < (start + segment)[:, None]),
                     second[:, None], main[:, None])  # [count, frames]
    embeds = torch.randn(count, frames, DIM, generator=generator).mul_(0.8 / np.sqrt(DIM))
    embeds += torch.randn(count, 1, DIM, generator=generator).mul_(0.5 / np.sqrt(DIM))
    embeds += topics[torch.from_numpy(which)]
    embeds += torch.from_numpy(_shared(seed))
    return embeds.half().numpy(), main, second


def _topics(seed):
    rng = np.random.default_rng([seed, 10 ** 9])
    topics = rng.standard_normal((TOPICS, DIM), dtype=np.float32)
    return topics / np.linalg.norm(topics, axis=1, keepdims=True)


def _shared(seed):
    rng = np.random.default_rng([seed, 10 ** 9 + 1])
    shared = rng.standard_normal(DIM).astype(np.float32)
    return 0.5 * shared / np.linalg.norm(shared)


def queries_for(count, num_videos, frames, seed=1):
    """Half of them a video's main topic, half a video's secondary topic, plus noise."""
    rng = np.random.default_rng(seed)
    topics = _topics(0)
    picks = rng.integers(0, num_videos, count)
    chosen = []
    for i, v in enumerate(picks):
        _, main, second = synthetic_videos(int(v), 1, frames)
        chosen.append((main if i % 2 else second)[0])
    noise = rng.standard_normal((count, DIM), dtype=np.float32) * (0.6 / np.sqrt(DIM))
    return topics[chosen] + noise + _shared(0)


def build(folder, num_videos, frames, commit_size=5000, stage1=None):
    """Write the index through IndexWriter, as the indexer does. returns: seconds."""
    from clip_hitchhiker.search.index_writer import EncodedVideo, IndexWriter, write_videos

    config = {"backend": "synthetic", "model": "synthetic", "pretrained": None,
              "model_id": "synthetic", "embed_dim": DIM, "preprocess": "none",
              "sampling": {"rule": "fps", "fps": 1.0, "max_frames": None}, "decoder": "none"}
    start = time.perf_counter()
    writer = IndexWriter(folder, config, stage1)
    times = [i + 0.5 for i in range(frames)]
    try:
        for first in range(0, num_videos, commit_size):
            count = min(commit_size, num_videos - first)
            embeds, _, _ = synthetic_videos(first, count, frames)
            encoded = [EncodedVideo(f"/synthetic/{first + i:08d}.mp4",
                                    {"size": 0, "mtime_ns": 0, "inode": 0, "ctime_ns": 0,
                                     "sha256": ""}, embeds[i], times,
                                    list(range(frames)), float(frames)) for i in range(count)]
            writer.commit([write_videos(folder, encoded, writer.reserve())])
    finally:
        writer.close()
    return time.perf_counter() - start


def disk_bytes(folder):
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def measure_reader(folder, num_videos, frames, num_queries, candidates, nprobe, threads):
    """In a fresh process: open, latencies, recall against the exhaustive search, RssAnon."""
    import faiss
    import torch

    from clip_hitchhiker.search.video_index import VideoIndex

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    index = VideoIndex.open(folder)
    queries = torch.from_numpy(queries_for(num_queries, num_videos, frames))
    search = lambda q, exact=False: index.search_embeddings(  # noqa: E731
        q, k=10, exact=exact, candidates=candidates, nprobe=nprobe)
    search(queries[:1])  # warm-up: page in what one query touches
    single = []
    two_stage = []
    for q in range(num_queries):
        start = time.perf_counter()
        two_stage += search(queries[q:q + 1])
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    search(queries[:BATCH])
    batch = (time.perf_counter() - start) / min(BATCH, num_queries)
    start = time.perf_counter()
    exact = search(queries, exact=True)
    exact_seconds = (time.perf_counter() - start) / num_queries
    start = time.perf_counter()
    search(queries[:1], exact=True)
    exact_single = time.perf_counter() - start
    recall = np.mean([len({h["video"] for h in a} & {h["video"] for h in b}) / 10
                      for a, b in zip(two_stage, exact)])
    return {"p50_ms": 1000 * float(np.percentile(single, 50)),
            "p95_ms": 1000 * float(np.percentile(single, 95)),
            "batch_ms_per_query": 1000 * batch, "recall_at_10": float(recall),
            "exact_ms_per_query_batched": 1000 * exact_seconds,
            "exact_ms_single": 1000 * exact_single, "rss_anon_mb": _status_kb("RssAnon") / 1024,
            "stage1": index.manifest["stage1"]["type"]}


def measure_page(folder, num_videos, frames, num_queries, candidates, threads):
    """In a fresh process: the search page's latency against the CLI's on the same queries.
    The page's server (serve's app under uvicorn, on 127.0.0.1) runs in a process of its own,
    as it does for a browser; its text encoder maps "q<i>" to query i's embedding, as the CLI
    path takes the embedding directly, so that the difference is what the page adds: HTTP,
    JSON, the hits' per-frame weights and the hand-over to the scorer thread. Interleaved, one
    CLI query then the same one through the page (one kept-alive connection), so that both meet
    the same noise. returns: {"cli_p50_ms", "page_p50_ms", "cli_p95_ms", "page_p95_ms"}."""
    import http.client
    import multiprocessing

    import faiss
    import torch

    from clip_hitchhiker.search.video_index import VideoIndex

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    index = VideoIndex.open(folder)
    queries = torch.from_numpy(queries_for(num_queries, num_videos, frames))
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    server = context.Process(target=_page_server, daemon=True,
                             args=(folder, num_videos, frames, num_queries, threads, ports))
    server.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", ports.get(timeout=600))

        def page(q):
            connection.request("GET", f"/api/search?q=q{q}&k=10&candidates={candidates}")
            response = connection.getresponse()
            return json.loads(response.read()), response.status

        cli_times, page_times = [], []
        page(0)  # warm-up: page in what one query touches, open the connection
        index.search_embeddings(queries[:1], k=10, candidates=candidates)
        for q in range(num_queries):
            start = time.perf_counter()
            cli_hits = index.search_embeddings(queries[q:q + 1], k=10, candidates=candidates)[0]
            cli_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            report, status = page(q)
            page_times.append(time.perf_counter() - start)
            page_hits = report["queries"][0]["hits"]
            if status != 200 or [h["video"] for h in page_hits] != [h["video"]
                                                                   for h in cli_hits]:
                raise RuntimeError(f"the page answered query {q} otherwise than the CLI")
    finally:
        server.terminate()
        server.join(30)
    return {f"{name}_p{p}_ms": 1000 * float(np.percentile(times, p))
            for name, times in (("cli", cli_times), ("page", page_times)) for p in (50, 95)}


def _page_server(folder, num_videos, frames, num_queries, threads, ports):
    """The page's server over the index, its port put on `ports` once it listens."""
    import threading

    import faiss
    import torch
    import uvicorn

    from clip_hitchhiker.search.server import SearchService, create_app
    from clip_hitchhiker.search.video_index import VideoIndex

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    queries = torch.from_numpy(queries_for(num_queries, num_videos, frames))
    # No clip is asked for, so the cache folder is never made.
    service = SearchService(VideoIndex.open(folder), Path(folder) / "no-clips",
                            encode_texts=lambda texts: queries[[int(t[1:]) for t in texts]])
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=0,
                                           log_level="error", access_log=False))
    thread = threading.Thread(target=server.run)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    ports.put(server.servers[0].sockets[0].getsockname()[1])
    thread.join()


def measure_page_in_child(index, size, args):
    child = subprocess.run(
        [sys.executable, __file__, "--_page", str(index), size, str(args.queries),
         str(args.candidates), str(args.threads)], capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"the page's reader failed: {child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def print_page_result(r):
    page = r["page"]
    print(f"{r['size']} search page: one query p50 {page['page_p50_ms']:.1f} ms against the "
          f"CLI's {page['cli_p50_ms']:.1f} ms ({page['page_p50_ms'] - page['cli_p50_ms']:+.1f} "
          f"ms; target <= +20 ms), p95 {page['page_p95_ms']:.1f} against "
          f"{page['cli_p95_ms']:.1f} ms")


def _status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def one_run(size, args, workdir):
    """Build an index of `size` (or take --reuse's), then measure it in a fresh reader process.
    What it built is deleted unless --keep names a folder for it."""
    num_videos, frames = SIZES[size]
    if args.reuse:
        return {"size": size, "videos": num_videos, "frames": frames, "build_s": None,
                "disk_gb": disk_bytes(args.reuse) / 1e9, **measure_in_child(args.reuse, size, args)}
    needed = num_videos * frames * DIM * 2 * 1.15
    free = shutil.disk_usage(workdir).free
    if needed > min(DISK_LIMIT, free - 5e9):
        return {"size": size, "skipped": f"needs ~{needed / 1e9:.0f} GB, {free / 1e9:.0f} GB "
                                          "free (limit 25 GB)"}
    folder = Path(tempfile.mkdtemp(prefix=f"bench_search_{size}_", dir=workdir))
    index = Path(args.keep) if args.keep else folder / "index"
    try:
        seconds = build(index, num_videos, frames, args.commit_size, args.stage1)
        return {"size": size, "videos": num_videos, "frames": frames,
                "build_s": seconds, "disk_gb": disk_bytes(index) / 1e9,
                **measure_in_child(index, size, args)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure_in_child(index, size, args):
    child = subprocess.run(
        [sys.executable, __file__, "--_reader", str(index), size, str(args.queries),
         str(args.candidates), str(args.nprobe), str(args.threads)],
        capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"the reader failed: {child.stderr[-3000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    if args.page:
        result["page"] = measure_page_in_child(index, size, args)
    return result


def print_result(r, load):
    if "skipped" in r:
        print(f"{r['size']}: skipped ({r['skipped']})")
        return
    built = "reused" if r["build_s"] is None else f"build {r['build_s']:.0f} s"
    print(f"{r['size']} ({r['videos']} videos x {r['frames']} frames, stage 1 {r['stage1']}): "
          f"{built}, disk {r['disk_gb']:.2f} GB, reader RAM beyond mmaps "
          f"{r['rss_anon_mb']:.0f} MB; one query p50 {r['p50_ms']:.1f} ms, p95 "
          f"{r['p95_ms']:.1f} ms; batch of {BATCH} {r['batch_ms_per_query']:.1f} ms/query; "
          f"recall@10 {r['recall_at_10']:.3f}; exhaustive {r['exact_ms_single']:.0f} ms for "
          f"one query, {r['exact_ms_per_query_batched']:.1f} ms/query batched "
          f"({r['exact_ms_single'] / r['p50_ms']:.0f}x the two stages' p50); load {load}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["10k", "100k"])
    parser.add_argument("--runs", type=int, default=3, help="fresh builds per size")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES)
    parser.add_argument("--nprobe", type=int, default=0,
                        help="inverted lists probed (default 0: the index's own choice)")
    parser.add_argument("--stage1", default=None, choices=STAGE1_TYPES,
                        help="the stage-1 index type (default: auto)")
    parser.add_argument("--keep", default=None,
                        help="build the index into this folder and keep it (one run, one size)")
    parser.add_argument("--reuse", default=None,
                        help="measure this index (built by --keep for the same size) in fresh "
                             "readers instead of building one")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--commit_size", type=int, default=5000, help="videos per commit")
    parser.add_argument("--quick", action="store_true", help="one small run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and FAISS threads of the reader (default 1: one query's "
                             "work is too small to share, and the machine is shared)")
    parser.add_argument("--page", action="store_true",
                        help="also measure the search page (serve's API over HTTP) against "
                             "the CLI's latency, in another fresh reader")
    parser.add_argument("--_reader", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--_page", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._page:
        folder, size, queries, candidates, threads = args._page
        print(json.dumps(measure_page(folder, *SIZES[size], int(queries), int(candidates),
                                      int(threads))))
        return
    if args._reader:
        folder, size, queries, candidates, nprobe, threads = args._reader
        print(json.dumps(measure_reader(folder, *SIZES[size], int(queries), int(candidates),
                                        int(nprobe) or None, int(threads))))
        return
    if args.quick:
        args.sizes, args.runs, args.queries = ["quick"], 1, 20
    if (args.keep or args.reuse) and len(args.sizes) != 1 or (args.keep and args.runs != 1):
        parser.error("--keep takes one size and one run, --reuse one size")
    if args.keep and Path(args.keep).exists():
        parser.error(f"--keep {args.keep} exists; name a new folder")
    if args.reuse and not (Path(args.reuse) / "manifest.json").is_file():
        parser.error(f"--reuse {args.reuse} holds no index; build one with --keep")
    for size in args.sizes:
        for _ in range(args.runs):
            result = one_run(size, args, args.workdir)
            print_result(result, " ".join(f"{x:.2f}" for x in os.getloadavg()))
            if "page" in result:
                print_page_result(result)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
