"""Stage 1 of search: a FAISS index over each video's mean frame embedding (unit length, inner
product), which proposes candidate videos that stage 2 scores exactly by query-scoring.

Types, chosen by size unless the user says otherwise (`--stage1`):
    flat    exact inner product over every mean (fast enough up to FLAT_LIMIT videos)
    ivfpq   inverted lists (about 4 sqrt(n) of them) with 64-byte product-quantised codes in RAM
    hnsw    a graph over the full vectors (no removal: pruning rebuilds it)
Ids are the videos' stable ids in the table, so additions and removals update the index in
place and a search returns ids, not rows.
"""
import math

import numpy as np

__all__ = ["FLAT_LIMIT", "STAGE1_TYPES", "build", "choose_type", "deserialize", "search",
           "serialize", "update"]

STAGE1_TYPES = ("auto", "flat", "ivfpq", "hnsw")
FLAT_LIMIT = 200_000
_PQ_BYTES = 64
_HNSW_NEIGHBOURS = 32
_DEFAULT_NPROBE = 64


def choose_type(requested, num_videos):
    """requested: one of STAGE1_TYPES; auto is flat up to FLAT_LIMIT videos, else ivfpq."""
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
    # FAISS wants >= 39 training points per list; small sets get fewer lists.
    nlist = max(1, min(int(4 * math.sqrt(max(count, 1))), count // 39))
    pq_bytes = _PQ_BYTES if dim % _PQ_BYTES == 0 else dim // math.gcd(dim, _PQ_BYTES)
    nbits = 8 if count >= 256 * 39 else max(1, int(math.log2(max(count // 39, 2))))
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_bytes}x{nbits}",
                                faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).permutation(count)[:max(256 * nlist, 100_000)]
    index.train(means[np.sort(sample)])
    index.nprobe = min(nlist, _DEFAULT_NPROBE)
    return index, {"nlist": nlist, "pq_bytes": pq_bytes, "nbits": nbits, "nprobe": index.nprobe}


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


def serialize(index):
    import faiss
    return faiss.serialize_index(index).tobytes()


def deserialize(data, params):
    """The index from serialize's bytes; params: the manifest's (nprobe is restored)."""
    import faiss

    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]
    return index


def search(index, queries, count, nprobe=None):
    """queries: [T, D] (any scale). returns: int64 [T, count] ids, -1 where fewer exist."""
    import faiss

    if nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = nprobe
    count = max(1, min(count, index.ntotal))
    _, ids = index.search(unit_rows(queries), count)
    return ids
