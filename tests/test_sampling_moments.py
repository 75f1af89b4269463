"""Time-based sampling, the moment rule and the per-frame weights, on hand-worked cases; the
moment rule also against a brute-force enumeration of every run in exact arithmetic."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from clip_hitchhiker.moments.rule import first_best, frame_cells, moment_from_weights
from clip_hitchhiker.video.sampling import (fps_sample_times, fps_segment_edges,
                                      nearest_frame_indices)
from query_scoring import queryscoring_frame_weights, similarity_queryscoring


def test_fps_segments_whole_and_partial_last_segment():
    np.testing.assert_allclose(fps_sample_times(3.0, 1), [0.5, 1.5, 2.5])
    # 2.5 s at 1 fps: the last segment is [2, 2.5), midpoint 2.25.
    np.testing.assert_allclose(fps_segment_edges(2.5, 1), [0, 1, 2, 2.5])
    np.testing.assert_allclose(fps_sample_times(2.5, 1), [0.5, 1.5, 2.25])
    np.testing.assert_allclose(fps_sample_times(1.0, 4), [0.125, 0.375, 0.625, 0.875])
    # A float duration a hair over a whole count is that count.
    assert len(fps_sample_times(10.000000001, 1)) == 10
    # Shorter than one segment: one frame, at the middle.
    np.testing.assert_allclose(fps_sample_times(0.2, 1), [0.1])


def test_max_frames_widens_segments_evenly():
    np.testing.assert_allclose(fps_sample_times(3600.0, 1, max_frames=4),
                               [450, 1350, 2250, 3150])
    np.testing.assert_allclose(fps_sample_times(3.0, 1, max_frames=10), [0.5, 1.5, 2.5])


@pytest.mark.parametrize("bad", [dict(duration=0, fps=1), dict(duration=1, fps=0),
                                 dict(duration=float("nan"), fps=1),
                                 dict(duration=1, fps=1, max_frames=0),
                                 dict(duration=1, fps=1, max_frames=2.5)])
def test_sampling_refuses_bad_arguments(bad):
    with pytest.raises(ValueError):
        fps_sample_times(**bad)


def test_nearest_frames_constant_and_variable_rate():
    frame_times = np.arange(30) / 10  # 3 s at 10 fps
    # Midpoints 0.5, 1.5, 2.5 are frame times exactly.
    assert nearest_frame_indices(fps_sample_times(3.0, 1), frame_times).tolist() == [5, 15, 25]
    # 0.25 lies between frames 2 (0.2) and 3 (0.3): a tie goes to the earlier one.
    assert nearest_frame_indices([0.25, 0.26, -1.0, 99.0], frame_times).tolist() == [2, 3, 0, 29]
    variable = [0.0, 0.1, 1.0, 1.05, 2.9]
    # 1.02 is 0.02 from 1.0 and 0.03 from 1.05; 2.0 is 0.95 from 1.05 and 0.9 from 2.9.
    assert nearest_frame_indices([0.5, 0.6, 1.02, 2.0, 2.5], variable).tolist() == [1, 2, 2, 4, 4]
    assert nearest_frame_indices([0.3, 5.0], [0.0]).tolist() == [0, 0]
    with pytest.raises(ValueError, match="ascending"):
        nearest_frame_indices([0.1], [0.2, 0.1])


def test_frame_cells_meet_at_midpoints():
    starts, ends = frame_cells([0.5, 1.5, 2.5], 3.0)
    np.testing.assert_allclose(starts, [0, 1, 2])
    np.testing.assert_allclose(ends, [1, 2, 3])
    starts, ends = frame_cells([1.0, 2.0, 5.0], 4.0)  # a time past the end is clipped
    np.testing.assert_allclose(starts, [0, 1.5, 3.0])
    np.testing.assert_allclose(ends, [1.5, 3.0, 4.0])


def test_moment_single_dominant_frame():
    times = [0.5, 1.5, 2.5, 3.5]
    moment = moment_from_weights([0.05, 0.8, 0.1, 0.05], times, 4.0)
    assert moment == {"start": 1.0, "end": 2.0, "peak": 1.5}


def test_moment_grows_towards_the_heavier_side():
    times = [0.5, 1.5, 2.5, 3.5, 4.5]
    # Peak 0.3 at frame 2; with frame 3 (0.25) the run holds 0.55 >= 0.5 in two cells.
    moment = moment_from_weights([0.1, 0.15, 0.3, 0.25, 0.2], times, 5.0)
    assert moment == {"start": 2.0, "end": 4.0, "peak": 2.5}
    # Two equally short runs of two cells: frames 1-2 hold 0.55, frames 2-3 hold 0.5; the
    # heavier wins.
    moment = moment_from_weights([0.1, 0.25, 0.3, 0.2, 0.15], times, 5.0)
    assert moment == {"start": 1.0, "end": 3.0, "peak": 2.5}


def test_moment_uniform_weights_and_full_mass():
    times = [0.5, 1.5, 2.5, 3.5]
    # Uniform: the peak is the earliest frame, and half the mass is its cell and the next.
    assert moment_from_weights([1, 1, 1, 1], times, 4.0) == {"start": 0.0, "end": 2.0,
                                                            "peak": 0.5}
    assert moment_from_weights([1, 1, 1, 1], times, 4.0, mass=1.0) == {"start": 0.0, "end": 4.0,
                                                                      "peak": 0.5}


def test_moment_unequal_cells_prefers_shorter_seconds():
    # Keyframe-like times: cells [0, 0.55), [0.55, 1.5), [1.5, 6.0). Frames 0-1 (1.5 s
    # together) and frames 1-2 (5.45 s) both reach 0.5 with the peak at frame 1.
    moment = moment_from_weights([0.3, 0.4, 0.3], [0.1, 1.0, 2.0], 6.0)
    assert moment == {"start": 0.0, "end": 1.5, "peak": 1.0}


def test_moment_never_holds_less_than_the_mass_at_either_end():
    """The run must hold the mass wherever it ends: [5, 6] holds 0.4 of this weight, not 0.5."""
    times = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    late = moment_from_weights([.1, .1, .1, .1, .2, .4], times, 6.0)
    early = moment_from_weights([.4, .2, .1, .1, .1, .1], times, 6.0)
    assert late == {"start": 4.0, "end": 6.0, "peak": 5.5}  # frames 4-5 hold 0.6
    assert early == {"start": 0.0, "end": 2.0, "peak": 0.5}  # its mirror image
    # The peak alone at either end holds 0.9: its own cell.
    assert moment_from_weights([0, 0, 0, 0, 1, 9], times, 6.0) == {"start": 5.0, "end": 6.0,
                                                                   "peak": 5.5}
    assert moment_from_weights([9, 1, 0, 0, 0, 0], times, 6.0) == {"start": 0.0, "end": 1.0,
                                                                   "peak": 0.5}
    # A peak at the end with the rest spread: 0.3 + 0.1 + 0.1 reaches 0.5 in three cells.
    assert moment_from_weights([.1, .1, .1, .1, .1, .1, .1, .3], times + [6.5, 7.5], 8.0) == {
        "start": 5.0, "end": 8.0, "peak": 7.5}


def test_a_cell_of_no_width_adds_weight_but_not_length():
    # Cells [0, .75], [.75, 1.25], [1.25, 1.75], [1.75, 2], [2, 2] (two frames at the end).
    # Frames 0-1, 1-3 and 1-4 all last 1.25 s; frames 1-4 hold the most (6 of 7).
    moment = moment_from_weights([1, 3, 0, 1, 2], [0.5, 1, 1.5, 2, 2], 2.0)
    assert moment == {"start": 0.75, "end": 2.0, "peak": 1.0}


def brute_force_moment(weights, times, duration, mass):
    """The rule as documented, over every run of cells in exact rational arithmetic (of the
    float inputs): the runs that hold the first largest weight's frame and >= mass of the
    weight; the shortest, then the heaviest, then the earliest."""
    shares = [Fraction(w) for w in weights]
    shares = [w / sum(shares) for w in shares]
    end_of_video = Fraction(duration)
    clipped = [min(max(Fraction(t), Fraction(0)), end_of_video) for t in times]
    starts = [Fraction(0)] + [(a + b) / 2 for a, b in zip(clipped, clipped[1:])]
    ends = starts[1:] + [end_of_video]
    cumulative = [Fraction(0)]
    for w in shares:
        cumulative.append(cumulative[-1] + w)
    peak = shares.index(max(shares))
    runs = [(ends[last] - starts[first], -(cumulative[last + 1] - cumulative[first]), first,
             last)
            for first in range(peak + 1) for last in range(peak, len(shares))
            if cumulative[last + 1] - cumulative[first] >= Fraction(mass)]
    _, _, first, last = min(runs)
    peak_time = min(max(Fraction(times[peak]), starts[first]), ends[last])
    return {"start": float(starts[first]), "end": float(ends[last]), "peak": float(peak_time)}


def weight_vectors(num_frames, rng):
    """Random shares, small integers (ties and zeros), and hand-made shapes: uniform, a single
    peak at every frame, equal peaks at both ends, and ramps up and down."""
    vectors = [rng.dirichlet(np.ones(num_frames)) for _ in range(10)]
    vectors += [rng.dirichlet(np.full(num_frames, 0.3)) for _ in range(4)]
    vectors += [v for v in (rng.integers(0, 4, num_frames).astype(float) for _ in range(14))
                if v.sum() > 0]
    vectors.append(np.ones(num_frames))
    vectors += [np.eye(num_frames)[i] + 0.05 for i in range(num_frames)]
    ends = np.ones(num_frames)
    ends[[0, -1]] = 5.0
    ramp = np.arange(1.0, num_frames + 1)
    return vectors + [ends, ramp, ramp[::-1].copy()]


def frame_time_layouts(num_frames, rng):
    """(times, duration): one frame a second; times on a quarter-second grid, some repeated
    or past the end; five distinct times in a 2-s video (many cells of no width); random."""
    grid = np.sort(rng.integers(0, 4 * num_frames + 3, num_frames)) / 4
    crowded = np.sort(rng.integers(0, 5, num_frames)) / 2  # 0, 0.5, ..., 2 (the end)
    return [(np.arange(num_frames) + 0.5, float(num_frames)), (grid, float(num_frames)),
            (crowded, 2.0), (np.sort(rng.uniform(0, num_frames, num_frames)), float(num_frames))]


@pytest.mark.parametrize("num_frames", range(1, 9))
def test_moment_equals_brute_force_over_every_run(num_frames):
    rng = np.random.default_rng(num_frames)
    masses = (0.1, 0.3, 0.5, 0.7, 1.0, float(rng.uniform(0.05, 1)))
    checked = 0
    for weights in weight_vectors(num_frames, rng):
        for times, duration in frame_time_layouts(num_frames, rng):
            for mass in masses:
                got = moment_from_weights(weights, times, duration, mass)
                expected = brute_force_moment(weights, times, duration, mass)
                assert got == pytest.approx(expected, abs=1e-12), (weights, times, mass)
                checked += 1
    assert checked >= 8 * 4 * 6


@pytest.mark.parametrize("num_frames", range(1, 9))
def test_moment_of_mirrored_weights_is_the_mirror_image(num_frames):
    """Reversing the weights and the times mirrors the moment (random weights and times, so no
    run ties with another and "the earliest" never decides)."""
    rng = np.random.default_rng(100 + num_frames)
    for _ in range(20):
        weights = rng.dirichlet(np.ones(num_frames))
        times = np.sort(rng.uniform(0, 10, num_frames))
        for mass in (0.3, 0.5, 0.8):
            moment = moment_from_weights(weights, times, 10.0, mass)
            mirrored = moment_from_weights(weights[::-1], 10.0 - times[::-1], 10.0, mass)
            assert mirrored == pytest.approx({"start": 10.0 - moment["end"],
                                              "end": 10.0 - moment["start"],
                                              "peak": 10.0 - moment["peak"]}, abs=1e-12)


def test_rounding_does_not_decide_a_tie():
    """Equal frames whose weights differ by rounding only (a softmax of equal cosines computed
    in different orders) are equal: the peak is the earliest, the run the earliest."""
    weights = np.full(10, 0.1)
    weights[7] += 1e-15
    weights[3] += 5e-16
    assert moment_from_weights(weights, np.arange(10) + 0.5, 10.0) == {
        "start": 0.0, "end": 5.0, "peak": 0.5}
    assert first_best([0.5, 0.5 + 1e-12, 0.2]) == 0 and first_best([0.5, 0.6, 0.6]) == 1


def test_moment_refuses_bad_weights():
    with pytest.raises(ValueError, match="same shape"):
        moment_from_weights([1.0, 0.0], [0.5], 1.0)
    with pytest.raises(ValueError, match="not all zero"):
        moment_from_weights([0.0, 0.0], [0.5, 1.5], 2.0)
    with pytest.raises(ValueError, match="mass"):
        moment_from_weights([1.0], [0.5], 1.0, mass=0)


def test_frame_weights_hand_computed_and_consistent_with_scores():
    e1, e2 = torch.eye(2, dtype=torch.float64)
    weights = queryscoring_frame_weights(e1[None], torch.stack([e1, e2])[None], temperature=1.0)
    expected = torch.tensor([math.e, 1.0], dtype=torch.float64) / (math.e + 1)
    torch.testing.assert_close(weights[0, 0], expected)
    # The weights give the scores: the cosine of the text with sum_f w_f v_f.
    gen = torch.Generator().manual_seed(0)
    text, videos = torch.randn(3, 4, generator=gen), torch.randn(5, 7, 4, generator=gen)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[2, 4:] = False
    weights = queryscoring_frame_weights(text, videos, temperature=0.3, video_mask=mask)
    assert weights.shape == (3, 5, 7)
    assert torch.all(weights[:, 2, 4:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))
    pooled = torch.einsum("t v f, v f d -> t v d", weights, videos)
    direct = torch.nn.functional.cosine_similarity(text[:, None], pooled, dim=-1)
    torch.testing.assert_close(direct, similarity_queryscoring(text, videos, 0.3,
                                                               video_mask=mask))


def test_read_video_times_picks_frames_nearest_segment_midpoints(tmp_path):
    from data_loader import read_video_times
    from tests.synthetic import decode_frame_indices, write_index_video

    path = tmp_path / "v.mp4"
    write_index_video(path, 40, fps=10)  # 4 s; frame i shown at i / 10 s
    frames, info = read_video_times(path, fps=1)
    # Midpoints 0.5, 1.5, 2.5, 3.5 s are frames 5, 15, 25, 35.
    assert info["indices"] == [5, 15, 25, 35]
    assert decode_frame_indices(frames) == [5, 15, 25, 35]
    assert info["times"] == pytest.approx([0.5, 1.5, 2.5, 3.5])
    assert info["duration"] == pytest.approx(4.0)
    assert info["frames"] == 40 and info["decoder"] == "pyav"
    # max_frames 2: segments [0, 2), [2, 4): midpoints 1 s and 3 s.
    frames, info = read_video_times(path, fps=1, max_frames=2)
    assert decode_frame_indices(frames) == info["indices"] == [10, 30]
    # 0.25 s segments: midpoints 0.125, 0.375, 0.625, 0.875 are nearest frames 1, 4, 6, 9.
    frames, info = read_video_times(path, fps=4)
    assert info["indices"][:4] == [1, 4, 6, 9]
    assert decode_frame_indices(frames)[:4] == [1, 4, 6, 9]


def test_times_count_from_the_first_frame_when_the_stream_starts_late(tmp_path):
    """A stream whose first timestamp is 2 s (as WebM and MPEG-TS files often have): times and
    duration are seconds from the first frame, so that moments match what a player shows."""
    import av

    from data_loader import read_video_times
    from tests.synthetic import decode_frame_indices, frame_colour

    path = tmp_path / "late.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for i in range(40):
            image = np.empty((48, 64, 3), np.uint8)
            image[...] = frame_colour(i)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = 20 + i  # time base 1/10: the first frame at 2.0 s
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        first = container.streams.video[0]
        assert float(first.start_time * first.time_base) == pytest.approx(2.0)
    frames, info = read_video_times(path, fps=1)
    assert info["indices"] == decode_frame_indices(frames) == [5, 15, 25, 35]
    assert info["times"] == pytest.approx([0.5, 1.5, 2.5, 3.5])
    assert info["duration"] == pytest.approx(4.0)
