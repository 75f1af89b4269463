"""Moment metrics and baselines against hand-worked cases, where the official evaluations
(TALL's calculate_IoU, densevid_eval's iou) differ included; the sliding windows against a
brute-force mean pooling, ties included (in exact arithmetic); bootstrap_means against
resampling by hand; localise on frames whose embeddings put the moment where it is known."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from clip_hitchhiker.bootstrap import bootstrap_means, resample_counts
from clip_hitchhiker.moments.evaluation import (WINDOW_FRACTIONS, best_frame_window,
                                                centred_window, clip_to_video, interval_iou,
                                                moment_metrics, sliding_window_moments)
from clip_hitchhiker.moments.run import (BEST_FRAME, CENTRED, SLIDING, WHOLE_VIDEO, localise,
                                        moment_content)
from clip_hitchhiker.moments.rule import frame_cells
from query_scoring import similarity_meanpooling


# ---------------------------------------------------------------- IoU and R@IoU

@pytest.mark.parametrize("predicted,truth,expected", [
    ([1, 3], [1, 3], 1.0),          # identical
    ([0, 4], [1, 2], 0.25),         # nested: the ground truth inside
    ([1, 2], [0, 4], 0.25),         # nested: the prediction inside
    ([0, 2], [1, 3], 1 / 3),        # partial overlap
    ([0, 1], [1, 2], 0.0),          # touching: no overlap
    ([0, 1], [2, 3], 0.0),          # disjoint: TALL's formula gives -1/3
    ([2, 2], [0, 4], 0.0),          # a zero-length prediction
    ([0, 4], [3, 3], 0.0),          # a zero-length ground truth
    ([3, 3], [3, 3], 0.0),          # both zero-length at one point: TALL divides by zero
    ([0, 1], [0, 2], 0.5),          # exactly 0.5 (densevid's + 1e-8 gives just under)
])
def test_iou_hand_cases(predicted, truth, expected):
    assert interval_iou([predicted], [truth])[0] == pytest.approx(expected, abs=1e-15)


def test_exact_threshold_is_recalled():
    # IoU exactly 0.5 counts at 0.5 (TALL's >=), and 0.3 at 0.3.
    iou = interval_iou([[0, 1], [0, 3]], [[0, 2], [0, 10]])
    assert iou.tolist() == [0.5, 0.3]
    assert moment_metrics(iou) == {"R1@0.3": 100.0, "R1@0.5": 50.0, "R1@0.7": 0.0,
                                   "mIoU": 40.0}


def test_metrics_hand_values():
    metrics = moment_metrics([1.0, 0.5, 0.25, 0.7, 0.3])
    assert metrics == pytest.approx({"R1@0.3": 80.0, "R1@0.5": 60.0, "R1@0.7": 40.0,
                                     "mIoU": 55.0}, abs=1e-12)
    with pytest.raises(ValueError, match="no query"):
        moment_metrics([])


def test_moments_past_the_end_are_clipped():
    clipped, changed = clip_to_video([[5, 40], [35, 40], [1, 2], [0, 30]], [30, 30, 30, 30])
    assert clipped.tolist() == [[5, 30], [30, 30], [1, 2], [0, 30]]
    assert changed.tolist() == [True, True, False, False]
    # Clipped to [5, 30]: a prediction of [5, 30] is exact; one that starts past the end
    # leaves a zero-length truth that nothing recalls, not even the whole video.
    assert interval_iou([[5, 30], [0, 30]], clipped[:2]).tolist() == [1.0, 0.0]


def test_bad_intervals_raise():
    with pytest.raises(ValueError, match="start <= end"):
        interval_iou([[2, 1]], [[0, 1]])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        interval_iou([1, 2], [0, 1])
    with pytest.raises(ValueError, match="positive"):
        clip_to_video([[0, 1]], [0])


# ---------------------------------------------------------------- baselines

def test_centred_and_best_frame_windows():
    assert centred_window(10, 4) == (3, 7)
    assert centred_window(10, 12) == (0, 10)
    times = [0.5, 1.5, 2.5]
    assert best_frame_window([0.1, 0.9, 0.2], times, 3, 2) == (0.5, 2.5)
    assert best_frame_window([0.9, 0.1, 0.2], times, 3, 2) == (0, 2)  # shifted into the video
    assert best_frame_window([0.1, 0.2, 0.9], times, 3, 2) == (1, 3)
    assert best_frame_window([0.1, 0.5, 0.5], times, 3, 1) == (1, 2)  # a tie: the first
    # Equal frames whose cosines differ by rounding only: still the first.
    assert best_frame_window([0.5 - 1e-16, 0.5, 0.5 + 1e-15], times, 3, 1) == (0, 1)


def test_sliding_window_hand_case():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    frames = np.array([e2, e1, e1, e2])
    times = [0.5, 1.5, 2.5, 3.5]
    moments, scores = sliding_window_moments([e1, e2], frames, times, 4, (0.5,))
    # e1: frames 1-2 (cosine 1); e2: frames 0-1 and 2-3 tie at 1/sqrt 2, the earlier wins.
    assert moments.tolist() == [[1, 3], [0, 2]]
    assert scores == pytest.approx([1, 2 ** -0.5], abs=1e-15)
    # Lengths 1 and 2 both reach cosine 1: the shorter wins, then the earlier.
    assert sliding_window_moments([e1], frames, times, 4, (0.5, 0.25))[0].tolist() == [[1, 2]]


def test_sliding_window_equals_brute_force_mean_pooling():
    rng = torch.Generator().manual_seed(0)
    frames, text = torch.randn(7, 4, generator=rng, dtype=torch.float64), \
        torch.randn(4, generator=rng, dtype=torch.float64)
    times = np.sort(np.random.default_rng(0).uniform(0, 9, 7))
    starts, ends = frame_cells(times, 9.0)
    fractions = (0.3, 0.5, 1.0)  # 2, 4 (3.5 rounds to even) and 7 frames
    best = None
    for length in (2, 4, 7):
        for first in range(7 - length + 1):
            score = float(similarity_meanpooling(text[None], frames[None, first:first + length]))
            if best is None or score > best[2]:
                best = (starts[first], ends[first + length - 1], score)
    moments, scores = sliding_window_moments(text[None].numpy(), frames.numpy(), times, 9.0,
                                             fractions)
    assert moments[0].tolist() == [best[0], best[1]]
    assert scores[0] == pytest.approx(best[2], abs=1e-12)


def test_identical_frames_tie_exactly_shorter_then_earlier():
    """Every window of equal frames has the same mean: the shortest and earliest wins, whatever
    rounding the window sums take."""
    frame = np.random.default_rng(1).normal(size=(1, 16))
    texts = np.random.default_rng(2).normal(size=(3, 16))
    for num_frames, shortest in ((7, 1), (10, 1), (33, 3)):  # round(0.1 F) frames
        frames = np.repeat(frame, num_frames, axis=0) * 3.7
        moments, scores = sliding_window_moments(texts, frames, np.arange(num_frames) + 0.5,
                                                 float(num_frames))
        assert moments.tolist() == [[0.0, float(shortest)]] * 3
        cosines = (texts @ frame[0]) / (np.linalg.norm(texts, axis=1) * np.linalg.norm(frame))
        assert scores == pytest.approx(cosines, abs=1e-12)


def exact_cosine_key(window_sum, text):
    """A rational that orders windows as their cosines with `text` do: sign(s.t) (s.t)^2 / |s|^2
    (|text| is the same for every window; a zero sum has cosine 0)."""
    dot, norm2 = int(np.dot(window_sum, text)), int(np.dot(window_sum, window_sum))
    return Fraction(0) if norm2 == 0 else Fraction(dot * abs(dot), norm2)


def brute_force_windows(text, frames, fractions):
    """(first, length) of the best window: the largest cosine exactly, then the shortest, then
    the earliest, over every window of every length."""
    num_frames = len(frames)
    lengths = {min(num_frames, max(1, int(round(f * num_frames)))) for f in fractions}
    keyed = [(exact_cosine_key(frames[first:first + length].sum(0), text), -length, -first)
             for length in lengths for first in range(num_frames - length + 1)]
    _, length, first = max(keyed)
    return -first, -length


@pytest.mark.parametrize("num_frames", range(1, 9))
def test_sliding_windows_equal_brute_force_with_ties(num_frames):
    """Integer frames from a palette of three (so that many windows tie), or all equal, or
    random; integer texts: the cosines' order is exact in rationals."""
    rng = np.random.default_rng(num_frames)
    palette = np.array([[2, 0, 1], [0, 1, 0], [-1, 2, 2]])
    videos = [palette[rng.integers(0, 3, num_frames)] for _ in range(8)]
    videos += [np.repeat(palette[:1], num_frames, axis=0),
               rng.integers(-2, 3, (num_frames, 3))]
    times = np.arange(num_frames) + 0.5
    starts, ends = frame_cells(times, float(num_frames))
    for frames in videos:
        texts = rng.integers(-2, 3, (4, 3))
        for fractions in (WINDOW_FRACTIONS, (0.3, 0.5, 1.0), (0.25,)):
            moments, scores = sliding_window_moments(texts, frames, times, float(num_frames),
                                                     fractions)
            for t, text in enumerate(texts):
                first, length = brute_force_windows(text, frames, fractions)
                assert moments[t].tolist() == [starts[first], ends[first + length - 1]]
                window = frames[first:first + length].sum(0)
                expected = 0.0 if not window.any() else np.dot(window, text) / (
                    np.linalg.norm(window) * max(np.linalg.norm(text), 1e-12))
                assert scores[t] == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- bootstrap_means

def test_bootstrap_means_equal_resampling_by_hand():
    rng = np.random.default_rng(3)
    a = {"R1@0.5": 100.0 * (rng.random(9) > 0.5), "mIoU": 100 * rng.random(9)}
    b = {"R1@0.5": 100.0 * (rng.random(9) > 0.5), "mIoU": 100 * rng.random(9)}
    result = bootstrap_means({"a": a, "b": b}, 30, seed=5, baseline="b")
    counts = resample_counts(9, 30, np.random.default_rng(5))
    for metric in a:
        means_a = [np.repeat(a[metric], c).mean() for c in counts]
        means_b = [np.repeat(b[metric], c).mean() for c in counts]
        assert result["intervals"]["a"][metric] == pytest.approx(
            np.percentile(means_a, [2.5, 97.5]).tolist(), abs=1e-9)
        difference = np.array(means_a) - np.array(means_b)
        entry = result["differences"]["a"][metric]
        assert entry["difference"] == pytest.approx(a[metric].mean() - b[metric].mean())
        assert entry["interval"] == pytest.approx(np.percentile(difference, [2.5, 97.5]))
        expected_p = min(1.0, 2 * min(np.mean(difference <= 0), np.mean(difference >= 0)))
        assert entry["p_value"] == pytest.approx(expected_p)
    assert "b" not in result["differences"]
    same = bootstrap_means({"a": a, "b": a}, 20, baseline="b")["differences"]["a"]["mIoU"]
    assert same["difference"] == 0 and same["p_value"] == 1.0


# ---------------------------------------------------------------- localise, known moments

def known_moment_content():
    """Two videos at 1 frame a second. Video A (8 s): frames 2..4 are e1, the rest e2; video B
    (4 s): frame 0 is e1. Queries: e1 in A (truth 2..5 s), e1 in B (truth 0..1 s), and e1 in B
    with a truth past the end (3..9 s, clipped to 3..4)."""
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    video_a = torch.stack([e1 if 2 <= i <= 4 else e2 for i in range(8)])
    video_b = torch.stack([e1, e2, e2, e2])
    decoded = [{"times": [i + 0.5 for i in range(8)], "duration": 8.0},
               {"times": [i + 0.5 for i in range(4)], "duration": 4.0}]
    return moment_content(torch.stack([e1, e1, e1]), torch.cat([video_a, video_b]), [8, 4],
                          ["A", "B"], decoded, query_video_ids=["A", "B", "B"],
                          captions=["a", "b", "c"], moments=[[2, 5], [0, 1], [3, 9]],
                          skipped=[])


def test_localise_finds_known_moments():
    results, facts = localise(known_moment_content(), [0.01], window_fractions=(0.375,))
    by_label = {r["label"]: r for r in results}
    assert facts["truth"].tolist() == [[2, 5], [0, 1], [3, 4]] and facts["clipped"] == 1
    # Mean length fraction: (3/8 + 1/4 + 1/4) / 3 = 7/24.
    assert facts["mean_length_fraction"] == pytest.approx(7 / 24)
    # At a low temperature A's weight sits on its three e1 frames, a third each: the shortest
    # run that holds the peak (the first of them, frame 2) and half the mass is frames 2-3,
    # cells 2..4 s. B's weight sits on frame 0: its cell, 0..1 s.
    qs = by_label["query-scoring, temp: 0.01"]
    assert qs["moments"].tolist() == [[2, 4], [0, 1], [0, 1]]
    assert qs["ious"] == pytest.approx([2 / 3, 1, 0], abs=1e-15)
    # Sliding windows of 3 frames in A (3/8 of 8), of 2 in B (1.5 rounds to 2): A's three e1
    # frames (cosine 1); B's frames 0-1 (cosine 1/sqrt 2, the others 0).
    assert by_label[SLIDING]["moments"].tolist() == [[2, 5], [0, 2], [0, 2]]
    assert by_label[SLIDING]["ious"].tolist() == [1.0, 0.5, 0.0]
    assert by_label[WHOLE_VIDEO]["moments"].tolist() == [[0, 8], [0, 4], [0, 4]]
    assert by_label[WHOLE_VIDEO]["ious"] == pytest.approx([3 / 8, 1 / 4, 1 / 4], abs=1e-15)
    a_length, b_length = 8 * 7 / 24, 4 * 7 / 24
    assert by_label[CENTRED]["moments"] == pytest.approx(np.array(
        [[4 - a_length / 2, 4 + a_length / 2], [2 - b_length / 2, 2 + b_length / 2],
         [2 - b_length / 2, 2 + b_length / 2]]))
    # Best frame: A's first e1 frame (2.5 s), B's frame 0.5 s (window shifted to start at 0).
    assert by_label[BEST_FRAME]["moments"] == pytest.approx(np.array(
        [[2.5 - a_length / 2, 2.5 + a_length / 2], [0, b_length], [0, b_length]]))


def test_localise_leaves_out_queries_of_skipped_videos():
    content = known_moment_content()
    content["query_video_ids"][1] = "gone"
    results, facts = localise(content, [0.1])
    assert facts["queries"] == [0, 2] and all(len(r["ious"]) == 2 for r in results)


def test_localise_on_identical_frames_picks_the_first_frame_by_every_method():
    """Equal frames are equally good: each method takes the earliest, although the cosines of
    the frames come from one matrix product whose rounding differs from row to row."""
    generator = torch.Generator().manual_seed(4)
    frame = torch.randn(512, generator=generator)
    texts = torch.randn(3, 512, generator=generator)
    num_frames = 33
    decoded = [{"times": [i + 0.5 for i in range(num_frames)], "duration": float(num_frames)}]
    content = moment_content(texts, frame.repeat(num_frames, 1), [num_frames], ["A"], decoded,
                             query_video_ids=["A"] * 3, captions=["a", "b", "c"],
                             moments=[[0, 3]] * 3, skipped=[])
    results, _ = localise(content, [0.01])
    by_label = {r["label"]: r["moments"].tolist() for r in results}
    # Uniform weights: half the mass is 16.5 of 33 cells, so 17 from the first.
    assert by_label["query-scoring, temp: 0.01"] == [[0, 17]] * 3
    assert by_label[SLIDING] == [[0, 3]] * 3  # the shortest windows: round(0.1 * 33) frames
    # Centred on frame 0 (0.5 s), shifted into the video; 3 s is the mean truth length (3/33 of
    # the video, times 33, rounded).
    assert np.array(by_label[BEST_FRAME]) == pytest.approx(np.array([[0, 3]] * 3), abs=1e-12)
