"""The two-stage search (FAISS candidates, codes in memory, exact finalists) against the
exhaustive search, on synthetic 512-d frame embeddings with cluster structure, written as a real
index.

Each video has a main topic (most frames) and a secondary topic (a segment of ~20 % of its
frames); frames are topic + a per-video offset + noise, plus a direction all embeddings share
(as CLIP's do). Half the queries name a video's main topic, half a secondary one. With 2000
topics, a 1M index holds ~500 videos per topic that a query finds nearly alike: the exact top 10
hides among them (--topics sets how many; fewer topics at a small size mimic a larger index).

Reported per size, each measured in a fresh reader process: build time, disk, the reader's RAM
beyond its memory maps (RssAnon: the codes, stage 1, the table, torch; the frames are read with
pread, not mapped), one-query latency p50/p95/p99 cold (each query after the frame files' pages
are dropped from the page cache with posix_fadvise(DONTNEED), checked with mincore) and warm (the
same queries again), per query in batches of 100, candidates and exactly scored finalists per
query, recall@10 and recall@1 of the two stages against the exhaustive search (--exact), and the
exhaustive search's latency: the floor the stages beat. Size "long": 500 one-minute videos and one
10-hour video (36 000 frames), with the reader's peak RAM during a query and --exact.

    python bench/bench_search.py --sizes 10k 100k --runs 3
    python bench/bench_search.py --sizes 1M --runs 1      # ~21 GB of disk; deleted after
    python bench/bench_search.py --quick                  # a smoke run
    python bench/bench_search.py --quick --videos 500 --topics 50   # smaller (the tests)
    python bench/bench_search.py --sizes 100k --runs 1 --keep /tmp/i100k   # build, keep it
    python bench/bench_search.py --sizes 100k --runs 3 --reuse /tmp/i100k  # fresh readers only
    python bench/bench_search.py --model results.jsonl    # the 10M model from saved runs
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

SIZES = {"quick": (2_000, 20), "10k": (10_000, 60), "100k": (100_000, 60),
         "1M": (1_000_000, 16), "long": (500, 60)}
LONG_FRAMES = 36_000   # the "long" size's extra video: 10 hours at 1 frame a second
DIM, TOPICS, SECONDARY_SHARE = 512, 2000, 0.2
BATCH = 100
DISK_LIMIT = 25e9


def size_shape(size, videos=None):
    """(videos, frames a video) of a size; videos (--videos), if given, in place of its count."""
    num_videos, frames = SIZES[size]
    return videos or num_videos, frames


def synthetic_videos(first, count, frames, seed=0, topics_count=TOPICS):
    """Videos first..first+count-1: (float16 [count, frames, DIM], main topics, second topics).
    Deterministic per video range (each batch has its own generator)."""
    import torch

    rng = np.random.default_rng([seed, first])
    generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    topics = torch.from_numpy(_topics(seed))
    main = rng.integers(0, topics_count, count)
    second = rng.integers(0, topics_count, count)
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


def queries_for(count, num_videos, frames, seed=1, topics_count=TOPICS):
    """Half of them a video's main topic, half a video's secondary topic, plus noise."""
    rng = np.random.default_rng(seed)
    topics = _topics(0)
    picks = rng.integers(0, num_videos, count)
    chosen = []
    for i, v in enumerate(picks):
        _, main, second = synthetic_videos(int(v), 1, frames, topics_count=topics_count)
        chosen.append((main if i % 2 else second)[0])
    noise = rng.standard_normal((count, DIM), dtype=np.float32) * (0.6 / np.sqrt(DIM))
    return topics[chosen] + noise + _shared(0)


def build(folder, num_videos, frames, commit_size=5000, stage1=None, topics=TOPICS,
          long_frames=0):
    """Write the index through IndexWriter, as the indexer does (and a video of long_frames
    frames after the others, when > 0). returns: seconds."""
    from clip_hitchhiker.search.index_writer import IndexWriter, write_videos

    config = {"backend": "synthetic", "model": "synthetic", "pretrained": None,
              "model_id": "synthetic", "embed_dim": DIM, "preprocess": "none",
              "sampling": {"rule": "fps", "fps": 1.0, "max_frames": None}, "decoder": "none"}
    start = time.perf_counter()
    writer = IndexWriter(folder, config, stage1)
    try:
        for first in range(0, num_videos, commit_size):
            count = min(commit_size, num_videos - first)
            embeds, _, _ = synthetic_videos(first, count, frames, topics_count=topics)
            encoded = [_encoded(first + i, embeds[i]) for i in range(count)]
            writer.commit([write_videos(folder, encoded, writer.reserve())])
        if long_frames:
            embeds, _, _ = synthetic_videos(num_videos, 1, long_frames, topics_count=topics)
            writer.commit([write_videos(folder, [_encoded(num_videos, embeds[0])],
                                        writer.reserve())])
    finally:
        writer.close()
    return time.perf_counter() - start


def _encoded(number, frames):
    from clip_hitchhiker.search.index_writer import EncodedVideo

    count = len(frames)
    return EncodedVideo(f"/synthetic/{number:08d}.mp4", {"size": 0, "mtime_ns": 0, "inode": 0,
                                                         "ctime_ns": 0, "sha256": ""},
                        frames, [i + 0.5 for i in range(count)], list(range(count)), float(count))


def disk_bytes(folder):
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def measure_reader(folder, size, num_queries, candidates, nprobe, threads, topics, device,
                   truth_file="", videos=None):
    """In a fresh process: open, latencies cold and warm, recall against the exhaustive search,
    RAM beyond the maps. truth_file: where the exhaustive search's answers (and its timings) are
    kept for this index and these queries, so that fresh readers of one --reuse index need not
    repeat it (8-9 minutes at 1M); "" to search exhaustively each time."""
    import faiss
    import torch

    from clip_hitchhiker.search.video_index import VideoIndex

    num_videos, frames = size_shape(size, videos)
    _set_threads(threads)
    start = time.perf_counter()
    index = VideoIndex.open(folder)
    opened = {"open_s": time.perf_counter() - start, "rss_open_mb": _status_kb("RssAnon") / 1024,
              "threads": [torch.get_num_threads(), faiss.omp_get_max_threads()]}
    _reset_peak()
    queries = torch.from_numpy(queries_for(num_queries, num_videos, frames, topics_count=topics))
    stats = []
    search = lambda q, exact=False, stats=None: index.search_embeddings(  # noqa: E731
        q, k=10, exact=exact, candidates=candidates, nprobe=nprobe, stats=stats, device=device)
    search(queries[:1])  # warm-up: the first call's one-time costs
    cold, resident = [], []
    two_stage = []
    for q in range(num_queries):
        index._files.drop_cached()
        resident.append(_resident_bytes(folder))
        start = time.perf_counter()
        two_stage += search(queries[q:q + 1], stats=stats)
        cold.append(time.perf_counter() - start)
    warm = []
    for q in range(num_queries):
        start = time.perf_counter()
        search(queries[q:q + 1])
        warm.append(time.perf_counter() - start)
    start = time.perf_counter()
    search(queries[:BATCH])
    batch = (time.perf_counter() - start) / min(BATCH, num_queries)
    serving_rss = _status_kb("RssAnon") / 1024
    peak_before_exact = _status_kb("VmHWM") / 1024
    key = {"manifest": index.manifest["checksum"], "queries": num_queries, "topics": topics}
    kept = json.loads(Path(truth_file).read_text()) if truth_file and Path(
        truth_file).is_file() else None
    reused = kept is not None
    if kept is not None and kept["key"] != key:
        raise SystemExit(f"{truth_file} holds the answers for another index or other queries")
    if kept is None:
        _reset_peak()
        start = time.perf_counter()
        exact_hits = search(queries, exact=True)
        exact_seconds = (time.perf_counter() - start) / num_queries
        start = time.perf_counter()
        search(queries[:1], exact=True)
        kept = {"key": key, "exact": [[h["video"] for h in hits] for hits in exact_hits],
                "exact_ms_per_query_batched": 1000 * exact_seconds,
                "exact_ms_single": 1000 * (time.perf_counter() - start),
                "peak_rss_exact_mb": _status_kb("VmHWM") / 1024}
        if truth_file:
            Path(truth_file).write_text(json.dumps(kept))
    exact = [[{"video": v} for v in videos] for videos in kept["exact"]]
    return {**opened, **_latencies("cold", cold), **_latencies("warm", warm),
            "batch_ms_per_query": 1000 * batch,
            "recall_at_10": _recall(two_stage, exact, 10), "recall_at_1": _recall(two_stage,
                                                                                  exact, 1),
            "candidates": float(np.mean([s["candidates"] for s in stats])),
            "finalists": float(np.mean([s["finalists"] for s in stats])),
            "finalists_p95": float(np.percentile([s["finalists"] for s in stats], 95)),
            "frames_resident_mb": float(np.max(resident)) / 2 ** 20 if resident else 0.0,
            "exact_ms_per_query_batched": kept["exact_ms_per_query_batched"],
            "exact_ms_single": kept["exact_ms_single"], "rss_anon_mb": serving_rss,
            "peak_rss_queries_mb": peak_before_exact,
            "peak_rss_exact_mb": kept["peak_rss_exact_mb"],
            "exact_reused": reused,
            "stage1": index.manifest["stage1"]["type"], "codes": bool(index.manifest.get(
                "codes")), "device": device}


def _latencies(kind, seconds):
    return {f"{kind}_p{p}_ms": 1000 * float(np.percentile(seconds, p)) for p in (50, 95, 99)}


def _recall(found, truth, k):
    """The share of the true top k (of the exhaustive search) that the two stages returned."""
    return float(np.mean([len({h["video"] for h in a[:k]} & {h["video"] for h in b[:k]}) / k
                          for a, b in zip(found, truth)]))


def _resident_bytes(folder):
    """Bytes of the index's frame files in the page cache (mincore(2) over a map of each file,
    unmapped at once), -1 where that fails. In this process, not by running fincore: forking a
    reader of 1.3 GB before each query left its pages copy-on-write, and the query that followed
    paid a fault on each page it wrote (8-9 ms at 100k)."""
    import ctypes
    import mmap

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return -1
    total = 0
    for path in sorted(Path(folder).glob("frames-*.npy")):
        size = path.stat().st_size
        if size == 0:
            continue
        with open(path, "rb") as f:
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if address in (None, ctypes.c_void_p(-1).value):
            return -1
        try:
            pages = ctypes.create_string_buffer(-(-size // mmap.PAGESIZE))
            if libc.mincore(address, size, pages) != 0:
                return -1
            resident = sum(byte & 1 for byte in pages.raw)
        finally:
            libc.munmap(address, size)
        total += min(resident * mmap.PAGESIZE, size)
    return total


def _reset_peak():
    """Start VmHWM (the peak resident size) again from the present size (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _set_threads(threads):
    """threads > 0: torch's and FAISS's threads; 0: their own defaults (one a core), as
    search_videos.py and serve run."""
    import faiss
    import torch

    if threads:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


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

    import torch

    from clip_hitchhiker.search.video_index import VideoIndex

    _set_threads(threads)
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
            connection.request("GET", f"/api/search?q=q{q}&k=10&candidates={candidates or ''}")
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

    import torch
    import uvicorn

    from clip_hitchhiker.search.server import SearchService, create_app
    from clip_hitchhiker.search.video_index import VideoIndex

    _set_threads(threads)
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
         str(args.candidates or 0), str(args.threads), str(args.videos or 0)],
        capture_output=True, text=True)
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
    num_videos, frames = size_shape(size, args.videos)
    topics = _topics_of(size, args)
    described = {"size": size, "videos": num_videos, "frames": frames, "topics": topics,
                 "long_frames": LONG_FRAMES if size == "long" else 0}
    if args.reuse:
        return {**described, "build_s": None, "disk_gb": disk_bytes(args.reuse) / 1e9,
                **_file_sizes(args.reuse), **measure_in_child(args.reuse, size, args)}
    needed = (num_videos * frames + described["long_frames"]) * DIM * 2 * 1.35
    free = shutil.disk_usage(workdir).free
    if needed > min(DISK_LIMIT, free - 5e9):
        return {"size": size, "skipped": f"needs ~{needed / 1e9:.0f} GB, {free / 1e9:.0f} GB "
                                          "free (limit 25 GB)"}
    folder = Path(tempfile.mkdtemp(prefix=f"bench_search_{size}_", dir=workdir))
    index = Path(args.keep) if args.keep else folder / "index"
    try:
        seconds = build(index, num_videos, frames, args.commit_size, args.stage1, topics,
                        described["long_frames"])
        return {**described, "build_s": seconds, "disk_gb": disk_bytes(index) / 1e9,
                **_file_sizes(index), **measure_in_child(index, size, args)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _topics_of(size, args):
    """The long-video run draws from 10 topics, so that many queries find the long video; the
    quick one from 200, so that a query's top 10 holds its topic's videos (with 2000 topics for
    2000 videos it would be mostly videos of other topics, at nearly equal scores)."""
    return args.topics or {"long": 10, "quick": 200}.get(size, TOPICS)


def _file_sizes(folder):
    """Bytes on disk by kind of file (frames, means, codes, stage1, table)."""
    kinds = {"frames": "frames-", "means": "means-", "codes": ("codes-", "meancodes-",
                                                                 "codebook-", "meanrange-"),
             "stage1": "stage1-", "table": "videos-"}
    files = [f for f in Path(folder).iterdir() if f.is_file()]
    return {f"{kind}_bytes": sum(f.stat().st_size for f in files if f.name.startswith(prefix))
            for kind, prefix in kinds.items()}


def measure_in_child(index, size, args):
    child = subprocess.run(
        [sys.executable, __file__, "--_reader", str(index), size, str(args.queries),
         str(args.candidates or 0), str(args.nprobe), str(args.threads),
         str(_topics_of(size, args)), args.device, args.truth, str(args.videos or 0)],
        capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"the reader failed: {child.stderr[-3000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    if args.page:
        result["page"] = measure_page_in_child(index, size, args)
    return result


def _threads(r):
    """torch's and FAISS's threads of a run (runs saved before they were recorded: 1)."""
    torch_threads, faiss_threads = r.get("threads", [1, 1])
    return str(torch_threads) if torch_threads == faiss_threads else \
        f"{torch_threads} torch, {faiss_threads} FAISS"


def print_result(r, load):
    if "skipped" in r:
        print(f"{r['size']}: skipped ({r['skipped']})")
        return
    built = "reused" if r["build_s"] is None else f"build {r['build_s']:.0f} s"
    long = (f" + one of {r['long_frames']}" if r["long_frames"] else "")
    print(f"{r['size']} ({r['videos']} videos x {r['frames']} frames{long}, {r['topics']} topics, "
          f"stage 1 {r['stage1']}, codes {'yes' if r['codes'] else 'no'}, stage 2 on "
          f"{r['device']}, reader threads {_threads(r)}): {built}, disk "
          f"{r['disk_gb']:.2f} GB, reader RAM beyond maps {r['rss_anon_mb']:.0f} MiB (at open "
          f"{r['rss_open_mb']:.0f} MiB, opened in {r['open_s']:.1f} s); one query cold p50 "
          f"{r['cold_p50_ms']:.1f} / p95 {r['cold_p95_ms']:.1f} / p99 {r['cold_p99_ms']:.1f} ms "
          f"(frame files in the page cache at most {r['frames_resident_mb']:.1f} MiB before "
          f"each), warm p50 {r['warm_p50_ms']:.1f} / p95 {r['warm_p95_ms']:.1f} / p99 "
          f"{r['warm_p99_ms']:.1f} ms; batch of {BATCH} {r['batch_ms_per_query']:.1f} ms/query; "
          f"{r['candidates']:.0f} candidates and {r['finalists']:.0f} finalists a query (p95 "
          f"{r['finalists_p95']:.0f}); recall@10 {r['recall_at_10']:.3f}, recall@1 "
          f"{r['recall_at_1']:.3f}; exhaustive {r['exact_ms_single']:.0f} ms for one query, "
          f"{r['exact_ms_per_query_batched']:.1f} ms/query batched "
          f"({r['exact_ms_single'] / r['cold_p50_ms']:.0f}x the two stages' cold p50"
          f"{'; measured by the first reader, read from --truth' if r['exact_reused'] else ''});"
          f" load {load}")
    if r["long_frames"]:
        padded = 100 * r["long_frames"] * DIM * 4 / 1e9
        print(f"long: peak resident size while querying {r['peak_rss_queries_mb']:.0f} MiB, while "
              f"searching exhaustively {r['peak_rss_exact_mb']:.0f} MiB, for a reader of "
              f"{r['rss_open_mb']:.0f} MiB (anonymous) at open (100 candidates padded to the "
              f"long video's frames would take {padded:.1f} GB)")


def model_10m(results):
    """A model of one 10M x 16 index fitted to a 100k and a 1M run, and the sharded layout that
    serves it. returns: lines to print."""
    small = next(r for r in results if r["size"] == "100k")
    large = next(r for r in results if r["size"] == "1M")
    # A --reuse run has no build time: take the latest build of that size.
    large = {**large, "build_s": next(r["build_s"] for r in results
                                      if r["size"] == "1M" and r["build_s"] is not None)}
    scale = 10  # 10M x 16 is ten times 1M x 16, file by file
    mapped = lambda r: (r["codes_bytes"] + r["stage1_bytes"]) / 2 ** 20  # noqa: E731 (in RAM)
    # RAM beyond the codes and stage 1 (the table, torch): a base plus a cost per video.
    per_video = ((large["rss_anon_mb"] - mapped(large)) - (small["rss_anon_mb"] - mapped(small))
                 ) / (large["videos"] - small["videos"])
    base = small["rss_anon_mb"] - mapped(small) - per_video * small["videos"]
    ram = base + per_video * scale * large["videos"] + scale * mapped(large)
    # Latency: a fixed part plus a part per frame scored from codes (candidates x frames).
    work = lambda r: r["candidates"] * r["frames"]  # noqa: E731
    slope = (large["cold_p50_ms"] - small["cold_p50_ms"]) / (work(large) - work(small))
    fixed = small["cold_p50_ms"] - slope * work(small)
    latency = fixed + slope * scale * work(large)
    shard_ram = large["rss_anon_mb"]
    return [f"10M x 16 (model from the 100k and 1M runs): one index would need "
            f"{ram / 1024:.1f} GiB of RAM beyond maps (codes "
            f"{scale * large['codes_bytes'] / 2**30:.1f} GiB, stage 1 "
            f"{scale * large['stage1_bytes'] / 2**30:.1f} GiB), "
            f"{scale * large['disk_gb']:.0f} GB of disk, one query cold p50 ~{latency:.0f} ms "
            f"(fixed {fixed:.0f} ms + {slope * 1000:.2f} ms per 1000 frames scored from codes, "
            f"{scale * large['candidates']:.0f} candidates x 16 frames); build "
            f"~{scale * large['build_s'] / 60:.0f} min",
            f"10M served as 10 shards of 1M (one index per disk of >= {large['disk_gb'] + 2:.0f}"
            f" GB, a reader process per shard, each query fanned out to all and the 10 top-10 "
            f"lists merged by their exact scores): RAM 10 x {shard_ram / 1024:.1f} GiB, a query "
            f"~{large['cold_p50_ms']:.0f} ms cold p50 with a core per shard (5 x that on 2 "
            f"cores); recall as at 1M ({large['recall_at_10']:.3f}: each shard's top 10 holds "
            f"every global top-10 hit it has)"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["10k", "100k"])
    parser.add_argument("--runs", type=int, default=3, help="fresh builds per size")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--videos", type=int, default=None,
                        help="videos in the index instead of the size's own count (a smaller "
                             "smoke run; give it again with --reuse)")
    parser.add_argument("--candidates", type=int, default=None,
                        help="videos stage 1 proposes per query (default: the index's own "
                             "rule, candidate_index.candidate_count, deepened as needed)")
    parser.add_argument("--nprobe", type=int, default=0,
                        help="inverted lists probed (default 0: the index's own choice)")
    parser.add_argument("--stage1", default=None, choices=STAGE1_TYPES,
                        help="the stage-1 index type (default: auto)")
    parser.add_argument("--topics", type=int, default=None,
                        help=f"topics the videos are drawn from (default {TOPICS}; 10 for "
                             "the long video's run)")
    parser.add_argument("--keep", default=None,
                        help="build the index into this folder and keep it (one run, one size)")
    parser.add_argument("--reuse", default=None,
                        help="measure this index (built by --keep for the same size) in fresh "
                             "readers instead of building one")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--commit_size", type=int, default=5000, help="videos per commit")
    parser.add_argument("--quick", action="store_true", help="one small run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and FAISS threads of the reader (default 0: their own "
                             "defaults, one a core, as search_videos.py runs)")
    parser.add_argument("--save", default=None, metavar="FILE",
                        help="append each run's figures to FILE as a JSON line")
    parser.add_argument("--model", default=None, metavar="FILE",
                        help="print the 10M model from the last 100k and 1M runs saved in FILE")
    parser.add_argument("--device", default="cpu",
                        help="where stage 2 scores: cpu (default) or cuda")
    parser.add_argument("--page", action="store_true",
                        help="also measure the search page (serve's API over HTTP) against "
                             "the CLI's latency, in another fresh reader")
    parser.add_argument("--truth", default="", metavar="FILE",
                        help="keep the exhaustive search's answers and timings in FILE (made by "
                             "the first reader, read by the next ones of the same index and "
                             "queries: with --reuse, only the first repeats it)")
    parser.add_argument("--_reader", nargs=10, help=argparse.SUPPRESS)
    parser.add_argument("--_page", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._page:
        folder, size, queries, candidates, threads, videos = args._page
        print(json.dumps(measure_page(folder, *size_shape(size, int(videos)), int(queries),
                                      int(candidates) or None, int(threads))))
        return
    if args._reader:
        (folder, size, queries, candidates, nprobe, threads, topics, device, truth,
         videos) = args._reader
        print(json.dumps(measure_reader(folder, size, int(queries), int(candidates) or None,
                                        int(nprobe) or None, int(threads), int(topics), device,
                                        truth, int(videos) or None)))
        return
    if args.model:
        saved = [json.loads(line) for line in Path(args.model).read_text().splitlines() if line]
        print("\n".join(model_10m(saved[::-1])))
        return
    if args.quick:
        args.sizes, args.runs, args.queries = ["quick"], 1, 20
    if args.videos is not None and args.videos < 1:
        parser.error(f"--videos must be >= 1, got {args.videos}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: the libraries' own counts), got {args.threads}")
    if (args.keep or args.reuse) and len(args.sizes) != 1 or (args.keep and args.runs != 1):
        parser.error("--keep takes one size and one run, --reuse one size")
    if args.keep and Path(args.keep).exists():
        parser.error(f"--keep {args.keep} exists; name a new folder")
    if args.reuse and not (Path(args.reuse) / "manifest.json").is_file():
        parser.error(f"--reuse {args.reuse} holds no index; build one with --keep")
    results = []
    for size in args.sizes:
        for _ in range(args.runs):
            result = one_run(size, args, args.workdir)
            print_result(result, " ".join(f"{x:.2f}" for x in os.getloadavg()))
            results.append(result)
            if args.save and "skipped" not in result:
                with open(args.save, "a") as f:
                    f.write(json.dumps(result) + "\n")
            if "page" in result:
                print_page_result(result)
            sys.stdout.flush()
    measured = {r["size"] for r in results if "skipped" not in r and r.get("build_s")}
    if {"100k", "1M"} <= measured:
        print("\n".join(model_10m(results)))


if __name__ == "__main__":
    main()
