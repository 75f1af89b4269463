"""Time-based sampling, the moment rule and the per-frame weights, on hand-worked cases."""
import math

import numpy as np
import pytest
import torch

from clip_hitchhiker.moments.rule import frame_cells, moment_from_weights
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
