"""Stage 1 of search: a FAISS index over segment means, the mean embedding of each run of
SEGMENT_FRAMES consecutive frames of a video (unit length, inner product). It proposes candidate
videos that stage 2 scores exactly by query-scoring. Segment means, not one mean per video, so
that a video where the query fills only a minute still comes up.

Types, chosen by the number of vectors unless the user says otherwise (`--stage1`):
    flat    exact inner product over every vector (fast enough up to FLAT_LIMIT vectors)
    ivfpq   inverted lists (about 2 sqrt(n)) with 64-byte product-quantised codes in RAM
    hnsw    a graph over the full vectors (no removal: pruning rebuilds it)
A vector's id is video id * 2^16 + its segment number, so additions and removals update the
index in place and a search gives videos, not rows.
"""
import math

import numpy as np

__all__ = ["FLAT_LIMIT", "STAGE1_TYPES", "build", "choose_type", "deserialize", "search",
           "serialize", "update"]

STAGE1_TYPES = ("auto", "flat", "ivfpq", "hnsw")
FLAT_LIMIT = 200_000
SEGMENT_FRAMES = 8
_SEGMENT_BITS = 16
_PQ_BYTES = 64
_HNSW_NEIGHBOURS = 32
_DEFAULT_NPROBE = 64


def segment_means(frames):
    """frames: [F, D] (any float). returns: float32 [ceil(F / SEGMENT_FRAMES), D], the mean of
    each run of SEGMENT_FRAMES consecutive frames (the last run may be shorter)."""
    frames = np.asarray(frames, dtype=np.float32)
    starts = np.arange(0, len(frames), SEGMENT_FRAMES)
    counts = np.diff(np.append(starts, len(frames))).astype(np.float32)
    return np.add.reduceat(frames, starts, axis=0) / counts[:, None]


def segment_count(num_frames):
    return -(-int(num_frames) // SEGMENT_FRAMES)


def vector_ids(video_ids, num_frames):
    """int64 ids of the segment vectors of videos (video_ids [n], num_frames [n]), in order."""
    return np.concatenate([(int(v) << _SEGMENT_BITS) + np.arange(segment_count(f))
                           for v, f in zip(video_ids, num_frames)] or [np.zeros(0, np.int64)])


def video_ids_of(ids):
    """The video id of each vector id (-1 stays -1)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(ids < 0, -1, ids >> _SEGMENT_BITS)


def choose_type(requested, num_videos):
    """requested: one of STAGE1_TYPES; auto is flat up to FLAT_LIMIT vectors, else ivfpq."""
    if requested not in STAGE1_TYPES:
        raise ValueError(f"stage-1 type must be one of {STAGE1_TYPES}, got {requested!r}")
    if requested != "auto":
        return requested
    return "flat" if num_videos <= FLAT_LIMIT else "ivfpq"


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
    elif kind == "ivfpq":
        index, params = _trained_ivfpq(means, seed)
    else:
        raise ValueError(f"unknown stage-1 index type {kind!r}")
    if len(means):
        index.add_with_ids(means, ids)
    return index, params


def _trained_ivfpq(means, seed):
    import faiss

    count, dim = means.shape
    # About 2 sqrt(n) lists, trained on 40 points each (FAISS wants >= 39): a minute of k-means
    # on two cores at 250k vectors; small sets get fewer lists.
    nlist = max(1, min(int(2 * math.sqrt(max(count, 1))), count // 40))
    pq_bytes = _PQ_BYTES if dim % _PQ_BYTES == 0 else dim // math.gcd(dim, _PQ_BYTES)
    nbits = 8 if count >= 256 * 39 else max(1, int(math.log2(max(count // 39, 2))))
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_bytes}x{nbits}",
                                faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).permutation(count)[:max(40 * nlist, 256 * 40)]
    index.train(means[np.sort(sample)])
    faiss.extract_index_ivf(index).nprobe = min(nlist, _DEFAULT_NPROBE)
    return index, {"nlist": nlist, "pq_bytes": pq_bytes, "nbits": nbits,
                   "nprobe": min(nlist, _DEFAULT_NPROBE)}


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


def search(index, queries, count, nprobe=None):
    """queries: [T, D] (any scale). returns: T lists of up to `count` video ids, best first
    (the videos of the best 4 * count segment vectors)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if nprobe is not None and ivf is not None:
        ivf.nprobe = nprobe
    wanted = max(1, min(4 * count, index.ntotal))
    _, ids = index.search(unit_rows(queries), wanted)
    videos = []
    for row in video_ids_of(ids):
        unique = dict.fromkeys(int(v) for v in row if v >= 0)
        videos.append(list(unique)[:count])
    return videos
