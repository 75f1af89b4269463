"""clip_hitchhiker.search.frame_codes: the codec's formulas on hand-built codes, nearest
centroids against brute force, and a trained codec's determinism."""
import numpy as np
import pytest
import torch

from clip_hitchhiker.search import frame_codes as fc


def hand_codec():
    """D = 4: means quantised on [0, 16) per dimension in steps of 1 (dimension 3: [-8, 8) in
    steps of 1); residuals in M = 1 sub-vector of 4 dimensions, centroid j = j * (1, 0, 0, -1)."""
    centroids = np.zeros((1, 256, 4), np.float32)
    centroids[0, :, 0], centroids[0, :, 3] = np.arange(256), -np.arange(256)
    return fc.Codec(np.array([0, 0, 0, -8], np.float32), np.ones(4, np.float32), centroids)


def test_subquantizers_are_16_dimensions_or_the_largest_divisor_below():
    assert [fc.subquantizers(d) for d in (512, 768, 1024, 32, 4, 30, 17)] == [
        32, 48, 64, 2, 1, 2, 17]


def test_means_are_cell_centres_packed_low_nibble_first():
    codec = hand_codec()
    means = np.array([[0.2, 15.9, 3.5, -8.0], [-5.0, 99.0, 7.0, 7.99]], np.float32)
    codes = fc.encode_means(codec, means)
    # Row 0: levels 0, 15, 3, 0 -> bytes 0 | 15 << 4, 3 | 0 << 4. Row 1 clips: 0, 15, 7, 15.
    assert codes.tolist() == [[0xF0, 0x03], [0xF0, 0xF7]]
    torch.testing.assert_close(fc.decode_means(codec, codes), torch.tensor(
        [[0.5, 15.5, 3.5, -7.5], [0.5, 15.5, 7.5, 7.5]]))


def test_an_odd_width_pads_the_last_byte():
    codec = fc.Codec(np.zeros(3, np.float32), np.ones(3, np.float32),
                     np.zeros((3, 256, 1), np.float32))
    codes = fc.encode_means(codec, np.array([[1.0, 2.0, 3.0]], np.float32))
    assert codes.tolist() == [[0x21, 0x03]]
    torch.testing.assert_close(fc.decode_means(codec, codes), torch.tensor([[1.5, 2.5, 3.5]]))


def test_frames_are_their_segment_mean_plus_the_nearest_centroid():
    codec = hand_codec()
    means = np.array([[2.0, 2.0, 2.0, 0.0]], np.float32)
    # Residuals 7.2 (0, 0, -7.2) and 250.6 (0, 0, -250.6): nearest centroids 7 and 251.
    frames = means + np.array([[7.2, 0, 0, -7.2], [250.6, 0, 0, -250.6]], np.float32)
    codes = fc.encode_frames(codec, frames, np.repeat(means, 2, axis=0))
    assert codes.tolist() == [[7], [251]]
    decoded = fc.decode_frames(codec, fc.encode_means(codec, means), codes, [0, 0])
    # The mean's cells: 2 -> 2.5; 0 on [-8, 8) -> level 8, centre 0.5.
    torch.testing.assert_close(decoded, torch.tensor([[2.5 + 7, 2.5, 2.5, 0.5 - 7],
                                                      [2.5 + 251, 2.5, 2.5, 0.5 - 251]]))


def test_encode_frames_is_the_brute_force_nearest_centroid():
    generator = np.random.default_rng(0)
    centroids = generator.standard_normal((3, 256, 2)).astype(np.float32)
    codec = fc.Codec(np.zeros(6, np.float32), np.ones(6, np.float32), centroids)
    frames = generator.standard_normal((5000, 6)).astype(np.float32)  # more than a block
    codes = fc.encode_frames(codec, frames, np.zeros_like(frames))
    for m in range(3):
        part = frames[:, 2 * m:2 * m + 2]
        distances = ((part[:, None, :] - centroids[m][None]) ** 2).sum(2)
        assert (codes[:, m] == distances.argmin(1)).all()


def test_training_is_deterministic_and_needs_enough_frames():
    generator = np.random.default_rng(1)
    frames = generator.standard_normal((fc.MIN_TRAINING_FRAMES, 32)).astype(np.float32)
    means = np.repeat(frames.reshape(-1, 8, 32).mean(1), 8, axis=0)
    first = fc.train(frames, means, means[::8])
    second = fc.train(frames, means, means[::8])
    for a, b in zip((first.low, first.step, first.centroids),
                    (second.low, second.step, second.centroids)):
        assert np.array_equal(a, b)
    assert first.centroids.shape == (2, 256, 16)
    assert np.array_equal(first.low, means.min(0)) and np.allclose(
        first.low + 16 * first.step, means.max(0))
    with pytest.raises(ValueError, match="needs >= 4096 frames"):
        fc.train(frames[:-1], means[:-1], means)


def test_a_trained_codec_is_far_closer_than_the_frames_are_apart():
    """Clustered frames: each coded frame lies nearer its own frame than any other frame does."""
    generator = np.random.default_rng(2)
    centres = generator.standard_normal((64, 32)).astype(np.float32)
    frames = (centres[np.arange(8192) % 64] + 0.05 * generator.standard_normal((8192, 32))
              ).astype(np.float32)
    means = np.repeat(frames.reshape(-1, 8, 32).mean(1), 8, axis=0)
    codec = fc.train(frames, means, means[::8])
    codes = fc.encode_frames(codec, frames, means)
    decoded = fc.decode_frames(codec, fc.encode_means(codec, means[::8]), codes,
                               np.arange(8192) // 8).numpy()
    errors = np.linalg.norm(decoded - frames, axis=1)
    assert np.median(errors) < 0.2 * np.median(np.linalg.norm(frames - frames[::-1], axis=1))


# ----------------------------------------------------------------------------------------------
# Scoring from the codes (CodedFrames), against the rebuilt frames


def test_coded_frames_give_the_hand_computed_dots_and_sums():
    """The hand codec: one segment of mean cell centres (2.5, 2.5, 2.5, 0.5), frames with codes 7
    and 251: v~ = (9.5, 2.5, 2.5, -6.5) and (253.5, 2.5, 2.5, -250.5)."""
    codec = hand_codec()
    mean_codes = fc.encode_means(codec, np.array([[2.0, 2.0, 2.0, 0.0]], np.float32))
    norms = torch.tensor([np.sqrt(9.5 ** 2 + 2 * 2.5 ** 2 + 6.5 ** 2),
                          np.sqrt(253.5 ** 2 + 2 * 2.5 ** 2 + 250.5 ** 2)], dtype=torch.float32)
    coded = fc.CodedFrames(codec, torch.from_numpy(mean_codes), torch.tensor([[7], [251]],
                                                                            dtype=torch.uint8),
                           torch.tensor([0, 0]), [2], norms)
    text = torch.tensor([1.0, 0.0, 0.0, 1.0])  # t . v~ = v~_0 + v~_3
    torch.testing.assert_close(coded.dots(text), torch.tensor([3.0, 3.0]))
    # The codec as a reader holds it (Codec.on: its centroids also stored by column) gives the
    # same lookup table.
    on_cpu = codec.on("cpu")
    assert on_cpu.columns.shape == (1, 4, 256) and on_cpu.columns.is_contiguous()
    assert torch.equal(on_cpu.columns[0, 0], torch.arange(256.0))
    assert torch.equal(on_cpu.columns[0, 3], -torch.arange(256.0))
    held = fc.CodedFrames(on_cpu, torch.from_numpy(mean_codes),
                          torch.tensor([[7], [251]], dtype=torch.uint8), torch.tensor([0, 0]),
                          [2], norms)
    torch.testing.assert_close(held.dots(text), torch.tensor([3.0, 3.0]), rtol=0, atol=0)
    total, = coded.weighted_sums(torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(total, torch.tensor([[0.25 * 9.5 + 0.75 * 253.5, 2.5, 2.5,
                                                     0.25 * -6.5 + 0.75 * -250.5]]))
    assert torch.equal(coded.norms, norms) and coded.lengths.tolist() == [2]


@pytest.mark.parametrize("aggregate", ["queryscoring", "mean"])
def test_scores_from_the_codes_equal_those_of_the_rebuilt_frames(aggregate):
    """Ragged videos (1 frame, a segment and a frame, segments cut short): the dot products,
    weighted sums and stage 2's estimates and bounds from CodedFrames equal those computed from
    the frames decode_frames rebuilds, to float32 rounding."""
    from clip_hitchhiker.search.ragged_scoring import _Ragged, approximate_scores, raised_scores

    generator = np.random.default_rng(3)
    frames = generator.standard_normal((fc.MIN_TRAINING_FRAMES, 32)).astype(np.float32)
    means = np.repeat(frames.reshape(-1, 8, 32).mean(1), 8, axis=0)
    codec = fc.train(frames, means, means[::8])
    lengths = [1, 9, 8, 17, 3, 24]
    segment_of_frame = np.concatenate([
        first + np.arange(n) // 8 for first, n in
        zip(np.cumsum([0] + [-(-n // 8) for n in lengths])[:-1], lengths)])
    segments = int(segment_of_frame.max()) + 1
    mean_codes = torch.from_numpy(fc.encode_means(codec, means[::8][:segments]))
    codes = torch.from_numpy(generator.integers(0, 256, (sum(lengths), 2), dtype=np.uint8))
    decoded = fc.decode_frames(codec, mean_codes, codes, segment_of_frame)
    coded = fc.CodedFrames(codec, mean_codes, codes, torch.from_numpy(segment_of_frame), lengths,
                           torch.linalg.vector_norm(decoded, dim=1))
    ragged = _Ragged(decoded, lengths)
    text = torch.from_numpy(generator.standard_normal(32).astype(np.float32))
    text /= text.norm()
    torch.testing.assert_close(coded.dots(text), decoded @ text, rtol=0, atol=1e-5)
    weights = [torch.from_numpy(generator.random(sum(lengths)).astype(np.float32))
               for _ in range(2)]
    for got, expected in zip(coded.weighted_sums(*weights), ragged.weighted_sums(*weights)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    errors = torch.from_numpy(generator.random(sum(lengths)).astype(np.float32))
    errors[4] = float("inf")  # unknown
    for got, expected in zip(approximate_scores(text, coded, errors, None, 0.1, aggregate),
                             approximate_scores(text, decoded, errors, lengths, 0.1, aggregate)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(raised_scores(text, coded, errors, None, 0.1, aggregate),
                               raised_scores(text, decoded, errors, lengths, 0.1, aggregate),
                               rtol=0, atol=1e-5)


def test_frame_norms_are_the_rebuilt_frames_lengths():
    codec = hand_codec()
    mean_codes = fc.encode_means(codec, np.array([[2.0, 2.0, 2.0, 0.0]], np.float32))
    norms = fc.frame_norms(codec, mean_codes, np.array([[7], [251]], np.uint8), [0, 0])
    torch.testing.assert_close(norms, torch.tensor([np.sqrt(9.5 ** 2 + 12.5 + 6.5 ** 2),
                                                    np.sqrt(253.5 ** 2 + 12.5 + 250.5 ** 2)],
                                                   dtype=torch.float32))
