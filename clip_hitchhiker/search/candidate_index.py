"""Stage 1 of search: a FAISS index over segment means, the mean embedding of each run of
SEGMENT_FRAMES consecutive frames of a video (unit length, inner product). It proposes candidate
videos that stage 2 scores exactly by query-scoring. Segment means, not one mean per video, so
that a video where the query fills only a minute still comes up.

Types, chosen by the number of vectors unless the user says otherwise (`--stage1`):
    flat    exact inner product over every vector (fast enough up to FLAT_LIMIT vectors)
    ivfsq8  inverted lists (about 2 sqrt(n)) with 8-bit scalar-quantised vectors in RAM (D bytes
            each), 4 lists probed (more for a deep ask: probes_for): the auto choice beyond
            FLAT_LIMIT, up to SQ8_LIMIT vectors
    ivfpq   inverted lists with 64-byte product-quantised codes in RAM (D / 8 times smaller than
            ivfsq8, and less exact: the auto choice beyond SQ8_LIMIT, where stage 2's codes rank
            its proposals)
    hnsw    a graph over the full vectors (no removal: pruning rebuilds it)
A vector's id is video id * 2^32 + its segment number (SEGMENT_BITS; indexes of format versions
1 and 2 used 2^16, which a video of more than 524,288 frames overflowed into the next video's
ids), so additions and removals update the index in place and a search gives videos, not rows.
The inverted lists of ivfsq8 and ivfpq are trained on the vectors there are when the type is
chosen; once the index holds RETRAIN_GROWTH times as many, the writer trains them again
(`outgrown`), so that lists stay short.

Measured on bench/bench_search.py's 100k videos x 60 frames (800 000 segment means), the share
of the exact top 10 among the 100 proposed videos: flat 0.998 (25 ms a query), ivfsq8 with 979
lists 0.998 at 8, 16 or 32 probes (6, 9, 14 ms; 4 is the default now: _DEFAULT_NPROBE);
ivfpq (64-byte codes) kept 0.888 of it with 50 proposed videos where flat kept 0.975: PQ's
error lost the rest, not the lists.
"""
import math

import numpy as np

__all__ = ["FLAT_LIMIT", "PROBED_SHARE", "SQ8_LIMIT", "STAGE1_TYPES", "build", "candidate_count",
           "choose_type", "deserialize", "outgrown", "search", "serialize", "update"]

STAGE1_TYPES = ("auto", "flat", "ivfsq8", "ivfpq", "hnsw")
FLAT_LIMIT = 200_000
# 512 MB of 8-bit codes at 512-d: past it, ivfpq's 72 bytes a vector leave room in a reader's
# 2 GB at a million videos for stage 2's codes (frame_codes), which rank what stage 1 proposes.
SQ8_LIMIT = 1_000_000
SEGMENT_FRAMES = 8
# Segment vectors searched per proposed video: a video whose every segment matches (8 of them
# at 60 frames) can take 8 places of the ranking, and the videos behind it must still come up.
SEGMENTS_PER_CANDIDATE = 8
# A vector id is video id << SEGMENT_BITS | segment: 2^31 videos of up to 2^32 segments each fit
# an int64. Format versions 1 and 2 used 16 bits (see VideoIndex: its manifests record none).
SEGMENT_BITS = 32
_PQ_BYTES = 64
_HNSW_NEIGHBOURS = 32
# Lists probed by default, recorded at a build or retrain (an index keeps its own until then).
# ivfsq8: 4 of its ~2 sqrt(n) (bench_search.py at 100k x 60, 979
# lists, 600 queries: the top 10 at 4 probes held 0.99983 of those at 8 (at 3, the same; at 2,
# 0.998), and stage 1 took 2.6 ms a query against 4.8 in the whole search: its lists, 3.3 MB
# a query at 8 probes, also pushed stage 2's data out of the CPU's caches).
_DEFAULT_NPROBE = {"ivfsq8": 4, "ivfpq": 64}
# A search probes lists that hold on average at least this many times the vectors it asks for
# (at 100k, 2 gave the same top 10 as 1 on 600 queries, at 1M on 400, with deep asks 0.4 ms
# slower).
PROBED_SHARE = 1
_KMEANS_ROUNDS = 10
RETRAIN_GROWTH = 4


# Videos proposed per query: at least MIN_CANDIDATES, and one in CANDIDATE_SHARE of the index.
# 150, not 100: at 100k x 60 frames 298 of bench_search.py's 300 queries deepened from 100 to
# 150 or further, and started at 150, the 52 that went on to 225 found them in stage 1's first
# answer instead of asking it again (warm p95 16-17 ms against 22-28, p50 0.4-1.8 ms less).
MIN_CANDIDATES = 150
CANDIDATE_SHARE = 1000


def candidate_count(num_videos):
    """How many videos stage 1 proposes per query in an index of num_videos: a fixed share of the
    index, not a fixed number, because the videos that look alike to a query grow with the
    index, and the exact top 10 hides among them (docs/search.md: at 1M videos 300 candidates
    held 0.986 of it, 1000 all)."""
    return max(MIN_CANDIDATES, -(-int(num_videos) // CANDIDATE_SHARE))


def segment_means(frames):
    """frames: [F, D] (any float). returns: float32 [ceil(F / SEGMENT_FRAMES), D], the mean of
    each run of SEGMENT_FRAMES consecutive frames (the last run may be shorter)."""
    frames = np.asarray(frames, dtype=np.float32)
    starts = np.arange(0, len(frames), SEGMENT_FRAMES)
    counts = np.diff(np.append(starts, len(frames))).astype(np.float32)
    return np.add.reduceat(frames, starts, axis=0) / counts[:, None]


def segment_count(num_frames):
    return -(-int(num_frames) // SEGMENT_FRAMES)


def vector_ids(video_ids, num_frames, segment_bits=SEGMENT_BITS):
    """int64 ids of the segment vectors of videos (video_ids [n], num_frames [n]), in order:
    video id << segment_bits | segment number. ValueError where an id would not fit."""
    blocks = []
    for video, frames in zip(video_ids, num_frames):
        segments = segment_count(frames)
        if not 0 <= int(video) < (1 << (63 - segment_bits)) or segments > (1 << segment_bits):
            raise ValueError(f"video id {video} with {segments} segments does not fit a stage-1 "
                             f"vector id of {segment_bits} segment bits")
        blocks.append((int(video) << segment_bits) + np.arange(segments, dtype=np.int64))
    return np.concatenate(blocks or [np.zeros(0, np.int64)])


def video_ids_of(ids, segment_bits=SEGMENT_BITS):
    """The video id of each vector id (-1 stays -1)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(ids < 0, -1, ids >> segment_bits)


def choose_type(requested, num_vectors):
    """requested: one of STAGE1_TYPES; auto is flat up to FLAT_LIMIT vectors, ivfsq8 up to
    SQ8_LIMIT, else ivfpq."""
    if requested not in STAGE1_TYPES:
        raise ValueError(f"stage-1 type must be one of {STAGE1_TYPES}, got {requested!r}")
    if requested != "auto":
        return requested
    if num_vectors <= FLAT_LIMIT:
        return "flat"
    return "ivfsq8" if num_vectors <= SQ8_LIMIT else "ivfpq"


def unit_rows(rows):
    """rows: [n, D]. returns: float32 [n, D], each row of length 1 (zero rows stay zero)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows / np.maximum(norms, 1e-12))


def build(kind, means, ids, seed=0):
    """A FAISS index of `kind` over means [n, D] (any scale; made unit here) with int64 ids [n].
    returns: (index, params: what was chosen, for the manifest)."""
    import faiss

    means, ids = unit_rows(means), np.asarray(ids, dtype=np.int64)
    dim = means.shape[1]
    if kind == "flat":
        index, params = faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), {}
    elif kind == "hnsw":
        index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, _HNSW_NEIGHBOURS,
                                                      faiss.METRIC_INNER_PRODUCT))
        params = {"M": _HNSW_NEIGHBOURS}
    elif kind in ("ivfsq8", "ivfpq"):
        index, params = _trained_ivf(kind, means, seed)
    else:
        raise ValueError(f"unknown stage-1 index type {kind!r}")
    if len(means):
        index.add_with_ids(means, ids)
    return index, params


def _trained_ivf(kind, means, seed):
    import faiss

    count, dim = means.shape
    # About 2 sqrt(n) lists, trained on 40 points each (FAISS wants >= 39): a minute of k-means
    # on two cores at 250k vectors; small sets get fewer lists.
    nlist = max(1, min(int(2 * math.sqrt(max(count, 1))), count // 40))
    params = {"nlist": nlist, "trained_on": count}
    if kind == "ivfsq8":
        codes = "SQ8"
    else:
        pq_bytes = _PQ_BYTES if dim % _PQ_BYTES == 0 else dim // math.gcd(dim, _PQ_BYTES)
        nbits = 8 if count >= 256 * 39 else max(1, int(math.log2(max(count // 39, 2))))
        codes, params = f"PQ{pq_bytes}x{nbits}", {**params, "pq_bytes": pq_bytes, "nbits": nbits}
    index = faiss.index_factory(dim, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).permutation(count)[:max(40 * nlist, 256 * 40)]
    # 10 k-means rounds, not FAISS's 25: stage 2 is exact, and the lists need not be optimal.
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.niter = _KMEANS_ROUNDS
    if kind == "ivfpq":
        ivf.pq.cp.niter = _KMEANS_ROUNDS
        # The factory turns on polysemous training, which only serves Hamming-distance
        # filtering (unused here) and took minutes on two cores.
        ivf.do_polysemous_training = False
    index.train(means[np.sort(sample)])
    params["nprobe"] = min(nlist, _DEFAULT_NPROBE[kind])
    ivf.nprobe = params["nprobe"]
    return index, params


def outgrown(params, num_vectors):
    """Whether an index built with params (the manifest's) should be trained again for
    num_vectors: its lists were trained on fewer than num_vectors / RETRAIN_GROWTH vectors."""
    return "trained_on" in params and num_vectors > RETRAIN_GROWTH * params["trained_on"]


def update(index, kind, remove_ids, add_means, add_ids):
    """Remove ids and add means in place. returns: False where the type cannot remove (hnsw):
    the caller rebuilds."""
    if len(remove_ids):
        if kind == "hnsw":
            return False
        index.remove_ids(np.asarray(remove_ids, dtype=np.int64))
    if len(add_ids):
        index.add_with_ids(unit_rows(add_means), np.asarray(add_ids, dtype=np.int64))
    return True


def on_gpus(index):
    """The index on every GPU where faiss-gpu is installed and sees one; else index itself."""
    import faiss

    if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        return index
    if getattr(index, "on_gpu", False):
        return index
    try:
        moved = faiss.index_cpu_to_all_gpus(index)
    except RuntimeError:  # a type FAISS has no GPU version of (hnsw): searched on the CPU
        return index
    moved.on_gpu = True
    return moved


def serialize(index):
    import faiss
    return faiss.serialize_index(index).tobytes()


def deserialize(data, params):
    """The index from serialize's bytes; params: the manifest's (nprobe is restored)."""
    import faiss

    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and "nprobe" in params:
        ivf.nprobe = params["nprobe"]
    return index


def probes_for(ivf, wanted):
    """The lists an IVF index probes to give `wanted` vectors: its own nprobe, or more where
    those lists hold on average fewer than PROBED_SHARE times as many (a deep ask)."""
    size = max(ivf.ntotal / max(ivf.nlist, 1), 1.0)
    return int(min(ivf.nlist, max(ivf.nprobe, math.ceil(PROBED_SHARE * wanted / size))))


def search(index, queries, count, nprobe=None, segment_bits=SEGMENT_BITS):
    """queries: [T, D] (any scale); nprobe: the lists an IVF index probes in this call (None:
    its own, or more for a deep ask: probes_for); segment_bits: of the index's ids (16 before
    format version 3). returns: T lists of up to `count` video ids, best first (the videos of
    the best SEGMENTS_PER_CANDIDATE * count segment vectors)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    recorded = ivf.nprobe if ivf is not None else None
    wanted = max(1, min(SEGMENTS_PER_CANDIDATE * count, index.ntotal))
    if ivf is not None:
        ivf.nprobe = nprobe if nprobe is not None else probes_for(ivf, wanted)
    try:
        _, ids = index.search(unit_rows(queries), wanted)
    finally:
        if ivf is not None:  # this call's nprobe, not every later search's
            ivf.nprobe = recorded
    videos = []
    for row in video_ids_of(ids, segment_bits):
        row = row[row >= 0]
        _, first = np.unique(row, return_index=True)  # each video at its best segment's place
        videos.append(row[np.sort(first)][:count].tolist())
    return videos
