"""Stage 1 (clip_hitchhiker.search.candidate_index): exact expectations on small built-by-hand
sets."""
import math

import numpy as np
import pytest
import torch

from clip_hitchhiker.search import candidate_index as ci

DIM = 64
TOPICS = 4


def test_auto_is_flat_then_ivfsq8_then_ivfpq_at_the_documented_sizes():
    assert (ci.FLAT_LIMIT, ci.SQ8_LIMIT) == (200_000, 1_000_000)
    assert ci.choose_type("auto", 1) == "flat"
    assert ci.choose_type("auto", 200_000) == "flat"
    assert ci.choose_type("auto", 200_001) == "ivfsq8"
    assert ci.choose_type("auto", 800_000) == "ivfsq8"  # the bench's 100k videos x 60 frames
    assert ci.choose_type("auto", 1_000_000) == "ivfsq8"
    assert ci.choose_type("auto", 1_000_001) == "ivfpq"
    assert ci.choose_type("auto", 2_000_000) == "ivfpq"  # the bench's 1M videos x 16 frames
    for kind in ("flat", "ivfsq8", "ivfpq", "hnsw"):
        assert ci.choose_type(kind, 10 ** 7) == kind
    with pytest.raises(ValueError, match="ivfsq4"):
        ci.choose_type("ivfsq4", 10)


def basis(i):
    vector = np.zeros(DIM, np.float32)
    vector[i] = 1
    return vector


def clustered_means(num_videos=40):
    """Two segment vectors per video: video v is about topic v % 4 (basis vector e_t), with
    cosine 0.9 - 0.08 (v // 4) at its first segment and 0.04 less at its second; the rest of
    each vector is a basis direction of its own, orthogonal to every topic. So a query e_t
    ranks the videos of topic t by v // 4, 0.04 or more apart (far above 8-bit rounding), and
    every other vector scores exactly 0."""
    means, ids = [], []
    for video in range(num_videos):
        for segment in range(2):
            cosine = 0.9 - 0.08 * (video // TOPICS) - 0.04 * segment
            own = basis(TOPICS + (2 * video + segment) % (DIM - TOPICS))
            means.append(cosine * basis(video % TOPICS) + math.sqrt(1 - cosine ** 2) * own)
            ids.append((video << 32) + segment)
    return np.stack(means), np.array(ids, dtype=np.int64)


def test_a_tiny_ivfsq8_with_every_list_probed_proposes_what_flat_does():
    means, ids = clustered_means()
    flat, flat_params = ci.build("flat", means, ids)
    ivf, params = ci.build("ivfsq8", means, ids)
    # 80 vectors: min(2 sqrt(80), 80 // 40) = 2 lists, and the default probes are capped by it.
    assert flat_params == {} and params == {"nlist": 2, "trained_on": 80, "nprobe": 2}
    queries = np.stack([basis(t) for t in range(TOPICS)])
    expected = [[t + TOPICS * r for r in range(5)] for t in range(TOPICS)]
    assert ci.search(flat, queries, 5) == expected
    assert ci.search(ivf, queries, 5, nprobe=params["nlist"]) == expected


def test_an_nprobe_holds_for_its_own_search_only():
    import faiss

    means, ids = clustered_means()
    ivf, params = ci.build("ivfsq8", means, ids)
    queries = np.stack([basis(t) for t in range(TOPICS)])
    ci.search(ivf, queries, 5, nprobe=1)
    assert faiss.extract_index_ivf(ivf).nprobe == params["nprobe"] == 2


def test_a_deep_ask_probes_lists_holding_the_vectors_asked_for():
    """probes_for: the index's nprobe, or ceil(wanted / mean list size) when more, at most
    every list; search probes that many (recorded afterwards as before), or exactly the
    nprobe given."""
    import faiss

    means = np.random.default_rng(0).standard_normal((800, DIM)).astype(np.float32)
    ids = (np.arange(400).repeat(2) << 32) + np.tile([0, 1], 400)
    ivf, params = ci.build("ivfsq8", means, ids)  # 800 vectors: min(2 sqrt(800), 800 // 40)
    inner = faiss.extract_index_ivf(ivf)
    assert (inner.nlist, inner.ntotal, params["nprobe"]) == (20, 800, 4)
    assert ci.PROBED_SHARE == 1
    assert [ci.probes_for(inner, wanted) for wanted in (1, 160, 161, 200, 399, 400, 401, 10 ** 6)] \
        == [4, 4, 5, 5, 10, 10, 11, 20]
    probed = []
    original = faiss.IndexIVFScalarQuantizer.search
    queries = np.stack([basis(t) for t in range(TOPICS)])
    try:
        faiss.IndexIVFScalarQuantizer.search = lambda self, *a, **k: probed.append(
            self.nprobe) or original(self, *a, **k)
        ci.search(ivf, queries, 20)          # 160 vectors: its own 4
        ci.search(ivf, queries, 25)          # 200 vectors: 5 lists
        ci.search(ivf, queries, 50)          # 400 vectors: 10 lists
        ci.search(ivf, queries, 25, nprobe=3)
    finally:
        faiss.IndexIVFScalarQuantizer.search = original
    assert probed == [4, 5, 10, 3] and inner.nprobe == 4


def test_ivfsq8_is_updated_in_place_and_survives_serialisation():
    means, ids = clustered_means()
    ivf, params = ci.build("ivfsq8", means, ids)
    video_4 = ci.video_ids_of(ids) == 4
    new_means = 2 * basis(0)[None].repeat(2, 0)  # any scale: made unit inside
    assert ci.update(ivf, "ivfsq8", ids[video_4], new_means, np.array([41 << 32, (41 << 32) + 1]))
    assert ivf.ntotal == len(ids)
    restored = ci.deserialize(ci.serialize(ivf), params)
    # Video 41 (cosine 1) comes first, video 4 is gone, video 8 moves up.
    assert ci.search(restored, basis(0)[None], 4) == [[41, 0, 8, 12]]


def test_an_ivf_index_is_trained_again_once_it_holds_four_times_its_training_set(tmp_path):
    from clip_hitchhiker.search import index_format as fmt
    from clip_hitchhiker.search.index_writer import EncodedVideo, IndexWriter, write_videos

    assert not ci.outgrown({}, 10 ** 9)  # flat and hnsw (and older manifests) record none
    assert not ci.outgrown({"trained_on": 4}, 16) and ci.outgrown({"trained_on": 4}, 17)
    config = {"backend": "synthetic", "model": "synthetic", "pretrained": None,
              "model_id": "synthetic", "embed_dim": DIM, "preprocess": "none",
              "sampling": {"rule": "fps", "fps": 1.0, "max_frames": None}, "decoder": "none"}
    generator = np.random.default_rng(0)
    writer = IndexWriter(tmp_path / "index", config, "ivfsq8")
    trained_on = []
    try:
        # 16 frames: 2 segment vectors a video; 2 videos, then 3 more (10 <= 4 x 4 vectors:
        # updated in place), then 7 more (24 > 16: trained again on all 24).
        for first, count in [(0, 2), (2, 3), (5, 7)]:
            encoded = [EncodedVideo(f"/synthetic/{v}.mp4", {"size": 0, "mtime_ns": 0,
                                                            "inode": 0, "ctime_ns": 0,
                                                            "sha256": ""},
                                    generator.standard_normal((16, DIM)).astype(np.float16),
                                    [i + 0.5 for i in range(16)], list(range(16)), 16.0)
                       for v in range(first, first + count)]
            writer.commit([write_videos(tmp_path / "index", encoded, writer.reserve())])
            stage1 = fmt.read_manifest(tmp_path / "index")["stage1"]
            trained_on.append((stage1["type"], stage1["params"]["trained_on"]))
    finally:
        writer.close()
    assert trained_on == [("ivfsq8", 4), ("ivfsq8", 4), ("ivfsq8", 24)]


def test_a_video_whose_every_segment_matches_does_not_hide_the_next_ones():
    """8 segment vectors are searched per proposed video: video 0's 8 segments all outrank
    video 1's, and video 1 must still be proposed (with 4 per video it was not)."""
    cosines = {0: [0.9] * 8, 1: [0.8] * 8, 2: [0.7]}
    means, ids = [], []
    for video, values in cosines.items():
        for segment, cosine in enumerate(values):
            own = basis(TOPICS + len(ids))
            means.append(cosine * basis(0) + math.sqrt(1 - cosine ** 2) * own)
            ids.append((video << 32) + segment)
    flat, _ = ci.build("flat", np.stack(means), np.array(ids, dtype=np.int64))
    assert ci.SEGMENTS_PER_CANDIDATE == 8
    assert ci.search(flat, basis(0)[None], 2) == [[0, 1]]
    assert ci.search(flat, basis(0)[None], 3) == [[0, 1, 2]]


def test_candidate_count_is_150_then_one_video_in_1000():
    assert [ci.candidate_count(n) for n in (0, 1, 100_000, 150_000, 150_001, 1_000_000,
                                            10 ** 7)] == [150, 150, 150, 150, 151, 1000, 10_000]


def test_segment_ids_cannot_reach_the_next_video():
    """Version 1's ids (video << 16 | segment) gave segment 65 536 of video 0 the id of video
    1's first segment; with 32 segment bits a video may have 2^32 segments (2^35 frames)."""
    frames = [65_536 * 8 + 1, 1]  # 524 289 frames: 65 537 segments, then a one-frame video
    ids = ci.vector_ids([0, 1], frames)
    assert ids[65_536] == 65_536 and ci.video_ids_of(ids).tolist() == [0] * 65_537 + [1]
    with pytest.raises(ValueError, match="does not fit"):  # version 1's ids overflowed here
        ci.vector_ids([0, 1], frames, segment_bits=16)
    with pytest.raises(ValueError, match="does not fit"):
        ci.vector_ids([0], [(1 << 32) * 8 + 1])
    with pytest.raises(ValueError, match="does not fit"):
        ci.vector_ids([1 << 31], [1])
