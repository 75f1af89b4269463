import numpy as np
import pytest
import torch

from metrics import ground_truth_ranks, ranks_to_metrics, t2v_metrics, v2t_metrics


def slow_rank(row, gt_value, break_ties):
    """Position of gt_value in the row sorted best-first, by the definition."""
    order = sorted(row, reverse=True)
    positions = [i + 1 for i, x in enumerate(order) if x == gt_value]
    return positions[0] if break_ties == "optimistically" else float(np.mean(positions))


def test_identity_is_perfect():
    metrics = t2v_metrics(np.eye(5))
    assert metrics == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "R50": 100.0,
                       "MedR": 1.0, "MeanR": 1.0}
    assert all(type(v) is float for v in metrics.values())
    assert v2t_metrics(torch.eye(5)) == metrics


def test_constant_matrix_pins_tie_policy():
    sims = np.zeros((4, 4))
    assert t2v_metrics(sims)["R1"] == 100.0
    averaged = t2v_metrics(sims, break_ties="averaging")
    # Every query ties with all 4 videos: rank (1+2+3+4)/4 = 2.5.
    assert averaged == {"R1": 0.0, "R5": 100.0, "R10": 100.0, "R50": 100.0,
                        "MedR": 2.5, "MeanR": 2.5}


def test_hand_computed_ranks():
    sims = np.array([[0.9, 0.1, 0.5],   # gt video 0: rank 1
                     [0.9, 0.1, 0.5],   # gt video 1: rank 3
                     [0.2, 0.8, 0.5]])  # gt video 2: rank 2
    metrics = t2v_metrics(sims)
    assert metrics["R1"] == pytest.approx(100 / 3)
    assert metrics["R5"] == 100.0
    assert metrics["MedR"] == 2.0 and metrics["MeanR"] == 2.0


def test_k_captions_per_video_release_convention():
    # 2 videos, 2 captions each: queries 0,1 -> video 0; queries 2,3 -> video 1.
    sims = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert t2v_metrics(sims)["R1"] == 50.0
    assert t2v_metrics(sims)["MeanR"] == 1.5
    # Video-to-text: each video has one caption ranked first.
    assert v2t_metrics(sims)["R1"] == 100.0


def test_query_to_video_equals_release_convention_and_varying_counts():
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((12, 4))
    implicit = t2v_metrics(sims)
    explicit = t2v_metrics(sims, query_to_video=np.repeat(np.arange(4), 3))
    assert implicit == explicit
    # Varying captions per video: video 0 has 1 caption, video 1 has 4, ...
    query_to_video = np.array([0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3])
    ranks = [slow_rank(sims[q], sims[q, v], "optimistically")
             for q, v in enumerate(query_to_video)]
    assert t2v_metrics(sims, query_to_video=query_to_video) == ranks_to_metrics(ranks)


def test_query_masks_drop_queries():
    sims = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    masked = t2v_metrics(sims, query_masks=np.array([1, 0, 1, 1], dtype=bool))
    assert masked["R1"] == pytest.approx(200 / 3)
    assert masked["MeanR"] == pytest.approx(4 / 3)
    # v2t: masked queries are no candidates either. Video 1's only kept caption (query 2)
    # scores 1.0 in column 1, beaten by nothing kept.
    assert v2t_metrics(sims, query_masks=np.array([1, 0, 1, 0]))["R1"] == 100.0


@pytest.mark.parametrize("break_ties", ["optimistically", "averaging"])
def test_vectorised_ranks_equal_slow_definition(break_ties):
    rng = np.random.default_rng(1)
    sims = rng.integers(0, 4, size=(21, 7)).astype(float)  # many ties
    query_to_video = np.repeat(np.arange(7), 3)
    t2v_ranks = [slow_rank(sims[q], sims[q, query_to_video[q]], break_ties) for q in range(21)]
    assert t2v_metrics(sims, break_ties=break_ties) == ranks_to_metrics(t2v_ranks)
    v2t_ranks = [min(slow_rank(sims[:, v], sims[q, v], break_ties)
                     for q in range(21) if query_to_video[q] == v) for v in range(7)]
    assert v2t_metrics(sims, break_ties=break_ties) == ranks_to_metrics(v2t_ranks)


def test_ground_truth_ranks_chunking(monkeypatch):
    import metrics
    rng = np.random.default_rng(2)
    sims = rng.standard_normal((50, 9))
    gt = sims[np.arange(50), np.arange(50) % 9]
    whole = ground_truth_ranks(sims, gt)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 20)
    np.testing.assert_array_equal(ground_truth_ranks(sims, gt), whole)


def test_full_test_size_is_vectorised():
    # MSR-VTT full test: 2990 videos x 20 captions. Correctness at that size, not timing.
    rng = np.random.default_rng(3)
    sims = rng.random((59800, 2990), dtype=np.float32)  # 3x faster to draw than normals
    query_to_video = np.repeat(np.arange(2990), 20)
    sims[np.arange(59800), query_to_video] += 10.0  # ground truth always first
    assert t2v_metrics(sims, query_to_video=query_to_video)["R1"] == 100.0
    assert v2t_metrics(sims, query_to_video=query_to_video)["MeanR"] == 1.0


@pytest.mark.parametrize("call,message", [
    (lambda: t2v_metrics(np.zeros(3)), "non-empty \\[num_queries, num_videos\\]"),
    (lambda: t2v_metrics(np.zeros((5, 2))), "not a whole number per video"),
    (lambda: t2v_metrics(np.array([[np.nan]])), "NaN"),
    (lambda: t2v_metrics(np.eye(2), break_ties="random"), "break_ties must be"),
    (lambda: t2v_metrics(np.eye(2), query_masks=np.ones(3)), "query_masks has 3 elements"),
    (lambda: t2v_metrics(np.eye(2), query_to_video=np.array([0, 2])), "must lie in \\[0, 2\\)"),
    (lambda: t2v_metrics(np.eye(2), query_to_video=np.array([0.0, 1.0])), "int array"),
    (lambda: t2v_metrics(np.eye(2), query_masks=np.zeros(2)), "no queries left"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_count_tied_queries():
    from metrics import count_tied_queries
    sims = np.array([[0.9, 0.9, 0.1],    # ties with video 1
                     [0.2, 0.8, 0.5],    # no tie
                     [0.3, 0.1, 0.3]])   # ties with video 0
    assert count_tied_queries(sims) == 2
    assert count_tied_queries(np.zeros((4, 4))) == 4
    assert count_tied_queries(np.eye(4)) == 0
    assert count_tied_queries(torch.zeros(4, 2), query_to_video=np.array([0, 0, 1, 1])) == 4


def test_lower_median_is_the_official_multi_sentence_medr():
    # Ranks 1, 2, 4, 9: numpy's median 3.0, torch's (CLIP4Clip's multi-sentence MedR) 2.0.
    assert ranks_to_metrics([4, 1, 9, 2])["MedR"] == 3.0
    assert ranks_to_metrics([4, 1, 9, 2], median="lower")["MedR"] == 2.0
    assert ranks_to_metrics([4, 1, 9, 2], median="lower")["MedR"] == float(
        torch.median(torch.tensor([4.0, 1.0, 9.0, 2.0])))
    assert ranks_to_metrics([5, 1, 3], median="lower")["MedR"] == 3.0  # odd: the same
    with pytest.raises(ValueError, match="median must be"):
        ranks_to_metrics([1], median="mean")


def test_v2t_over_caption_sets_by_hand():
    from metrics import v2t_group_ranks
    # Video 0's captions are queries 0, 1; video 1's are 2, 3; video 2's is 4.
    sims = np.array([[0.9, 0.1, 0.0],
                     [0.5, 0.2, 0.0],
                     [0.8, 0.7, 0.0],
                     [0.6, 0.3, 0.0],
                     [0.1, 0.0, 0.4]])
    query_to_video = np.array([0, 0, 1, 1, 2])
    # Video 1 scores the caption sets: {0, 1} by 0.2, {2, 3} by 0.7, {4} by 0.0: rank 1. Ranking
    # every caption instead, query 2 (0.7) comes first too; video 0: its set 0.9 beats 0.8.
    # Video 2: set {4} 0.4 against 0.0 and 0.0: rank 1.
    np.testing.assert_array_equal(v2t_group_ranks(sims, query_to_video=query_to_video),
                                  [1, 1, 1])
    # Where the protocols differ: video 0 against video 1's two captions 0.95 and 0.92; its own
    # best is 0.9, so it ranks third among captions but second among caption sets.
    sims[2:4, 0] = [0.95, 0.92]
    np.testing.assert_array_equal(v2t_group_ranks(sims, query_to_video=query_to_video)[0], 2)
    assert v2t_metrics(sims, query_to_video=query_to_video)["MeanR"] == pytest.approx(5 / 3)


@pytest.mark.parametrize("break_ties", ["optimistically", "averaging"])
def test_v2t_over_caption_sets_equals_the_definition(break_ties):
    from metrics import v2t_group_ranks
    rng = np.random.default_rng(4)
    sims = rng.integers(0, 4, size=(13, 5)).astype(float)  # many ties
    query_to_video = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 1])
    masks = np.ones(13, dtype=bool)
    masks[4:6] = False  # video 2 loses every caption: it is left out, and so is its set
    kept = [v for v in range(5) if v != 2]
    expected = []
    for v in kept:
        set_scores = [max(sims[q, v] for q in range(13) if masks[q] and query_to_video[q] == g)
                      for g in kept]
        expected.append(slow_rank(set_scores, set_scores[kept.index(v)], break_ties))
    np.testing.assert_array_equal(
        v2t_group_ranks(sims, masks, break_ties, query_to_video), expected)
