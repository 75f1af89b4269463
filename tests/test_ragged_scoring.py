"""clip_hitchhiker.search.ragged_scoring: query-scoring of videos stored ragged, against
query_scoring's padded functions, hand values, and the bounds of scores from approximate frames
against every perturbation tried (random, along the text, along the frame, and optimised)."""
import math

import numpy as np

import pytest
import torch

from clip_hitchhiker.search.ragged_scoring import (approximate_scores, ragged_scores,
                                                   raised_scores, score_bounds, unit_text,
                                                   video_score)
from query_scoring import (queryscoring_frame_weights, similarity_meanpooling,
                           similarity_queryscoring)


def ragged_and_padded(generator, lengths, dim=16):
    """Frames rounded to float16 (as the shards store them): ragged [N, D], padded [C, F, D]
    with zeros, and the padding mask."""
    videos = [torch.randn(n, dim, generator=generator).half().float() for n in lengths]
    padded = torch.zeros(len(lengths), max(lengths), dim)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, video in enumerate(videos):
        padded[i, :len(video)], mask[i, :len(video)] = video, True
    return torch.cat(videos), padded, mask


@pytest.mark.parametrize("temperature", [0.1, 1.0, 1e-30])
def test_ragged_scores_equal_similarity_queryscoring(temperature):
    generator = torch.Generator().manual_seed(0)
    lengths = [7, 3, 1, 5, 7]
    frames, padded, mask = ragged_and_padded(generator, lengths)
    text = torch.randn(1, 16, generator=generator) * 3
    expected = similarity_queryscoring(text, padded, temperature, video_mask=mask)[0]
    torch.testing.assert_close(ragged_scores(unit_text(text[0]), frames, lengths, temperature),
                               expected, rtol=0, atol=1e-6)


def test_ragged_scores_by_mean_equal_similarity_meanpooling():
    generator = torch.Generator().manual_seed(1)
    lengths = [2, 6, 4]
    frames, padded, mask = ragged_and_padded(generator, lengths)
    text = torch.randn(1, 16, generator=generator)
    expected = similarity_meanpooling(text, padded, video_mask=mask)[0]
    torch.testing.assert_close(ragged_scores(unit_text(text[0]), frames, lengths, 0.1, "mean"),
                               expected, rtol=0, atol=1e-6)


def test_ragged_scores_of_a_query_equal_to_a_frame():
    """The style guide's hand value: a query equal to frame e1 against frames e1 and e2 scores
    e / sqrt(e^2 + 1) at temperature 1, and 1 / sqrt(2) by mean pooling."""
    frames, text = torch.eye(2), torch.tensor([1.0, 0.0])
    e = math.e
    torch.testing.assert_close(ragged_scores(text, frames, [2], 1.0),
                               torch.tensor([e / math.sqrt(e ** 2 + 1)]))
    torch.testing.assert_close(ragged_scores(text, frames, [2], 1.0, "mean"),
                               torch.tensor([1 / math.sqrt(2)]))


@pytest.mark.parametrize("aggregate", ["queryscoring", "mean"])
def test_one_videos_score_and_weights_equal_query_scorings(aggregate):
    generator = torch.Generator().manual_seed(6)
    frames = torch.randn(9, 16, generator=generator).half().float()
    text = torch.randn(16, generator=generator)
    score, weights = video_score(unit_text(text), frames, 0.1, aggregate)
    function = similarity_meanpooling if aggregate == "mean" else similarity_queryscoring
    expected = function(text[None], frames[None], *(() if aggregate == "mean" else (0.1,)))
    assert score == pytest.approx(float(expected[0, 0]), abs=1e-6)
    torch.testing.assert_close(weights, queryscoring_frame_weights(text[None], frames[None],
                                                                   0.1)[0, 0], rtol=0, atol=1e-6)


def test_the_bound_of_one_frame_is_the_cone_of_its_error():
    """One frame at angle 60 degrees from the text, known within 0.5 of its length 1: the true
    frame is within asin(0.5) = 30 degrees of it, so the score is in [cos 90, cos 30], and both
    ends are reached by frames of that error."""
    text = torch.tensor([1.0, 0.0])
    approx = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)]])
    lower, upper = score_bounds(text, approx, torch.tensor([0.5]), [1], 0.1)
    torch.testing.assert_close(lower, torch.tensor([0.0 - 1e-5]), atol=2e-6, rtol=0)
    torch.testing.assert_close(upper, torch.tensor([math.cos(math.pi / 6) + 1e-5]), atol=2e-6,
                               rtol=0)
    for angle in (math.pi / 6, math.pi / 2):  # the tangent frames: length cos 30 degrees
        true = math.cos(math.pi / 6) * torch.tensor([[math.cos(angle), math.sin(angle)]])
        assert (true - approx).norm() == pytest.approx(0.5, abs=1e-6)
        score = float(similarity_queryscoring(text[None], true[None], 0.1)[0, 0])
        assert score == pytest.approx(math.cos(angle), abs=1e-6)
        assert lower[0] <= score <= upper[0]


def test_zero_errors_give_the_exact_score_and_a_bound_at_it():
    generator = torch.Generator().manual_seed(2)
    lengths = [5, 2, 9]
    frames, _, _ = ragged_and_padded(generator, lengths)
    text = unit_text(torch.randn(16, generator=generator))
    exact = ragged_scores(text, frames, lengths, 0.1)
    estimate, upper = approximate_scores(text, frames, torch.zeros(len(frames)), lengths, 0.1)
    lower, certain = score_bounds(text, frames, torch.zeros(len(frames)), lengths, 0.1)
    torch.testing.assert_close(estimate, exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(upper, exact, rtol=0, atol=1e-6)  # the typical bound: 0 errors
    assert bool((lower <= exact).all() and (exact <= certain).all())


def perturbations(generator, approx, errors, text, tries):
    """True frames within errors of approx: random directions, along the text, along the frames
    (both signs), each at a random share of the error (mostly near all of it)."""
    count, dim = approx.shape
    for attempt in range(tries):
        kind = attempt % 3
        if kind == 0:
            direction = torch.randn(count, dim, generator=generator)
        elif kind == 1:
            direction = text.expand(count, dim).clone()
        else:
            direction = approx.clone()
        direction *= torch.sign(torch.randn(count, 1, generator=generator))
        direction /= direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        share = torch.rand(count, 1, generator=generator) ** 0.2
        yield approx + direction * errors[:, None] * share


@pytest.mark.parametrize("aggregate", ["queryscoring", "mean"])
def test_no_perturbation_within_the_errors_leaves_the_bounds(aggregate):
    """Every small case (D = 2..5, F = 1..4, four temperatures), 40 true frame sets each."""
    generator = torch.Generator().manual_seed(3)
    checked = 0
    for case in range(120):
        dim, count = 2 + case % 4, 1 + (case // 4) % 4
        temperature = (0.05, 0.1, 1.0, 10.0)[(case // 16) % 4]
        text = torch.randn(dim, generator=generator)
        approx = torch.randn(count, dim, generator=generator)
        errors = torch.rand(count, generator=generator) * approx.norm(dim=1) * float(
            torch.rand(1, generator=generator))
        lower, upper = score_bounds(unit_text(text), approx, errors, [count], temperature,
                                    aggregate)
        for true in perturbations(generator, approx, errors, unit_text(text), 40):
            if aggregate == "mean":
                score = similarity_meanpooling(text[None], true[None])[0, 0]
            else:
                score = similarity_queryscoring(text[None], true[None], temperature)[0, 0]
            assert lower[0] <= score <= upper[0], (case, float(lower), float(score), float(upper))
            checked += 1
    assert checked == 120 * 40


def test_an_optimised_perturbation_stays_within_the_bounds():
    """Gradient ascent (and descent) on the score over frames within the errors."""
    generator = torch.Generator().manual_seed(4)
    for case in range(6):
        dim, count = 3 + case % 2, 2 + case % 3
        text = torch.randn(dim, generator=generator)
        approx = torch.randn(count, dim, generator=generator)
        errors = 0.4 * approx.norm(dim=1)
        lower, upper = score_bounds(unit_text(text), approx, errors, [count], 0.1)
        for sign in (1, -1):
            offset = (0.01 * torch.randn(count, dim, generator=generator)).requires_grad_()
            optimiser = torch.optim.Adam([offset], lr=0.05)
            for _ in range(150):
                scale = (errors[:, None] / offset.norm(dim=1, keepdim=True).clamp_min(1e-12))
                true = approx + offset * scale.clamp(max=1)
                score = similarity_queryscoring(text[None], true[None], 0.1)[0, 0]
                optimiser.zero_grad()
                (-sign * score).backward()
                optimiser.step()
            assert lower[0] <= float(score.detach()) <= upper[0]


def test_unknown_errors_allow_any_score_and_never_nan():
    approx = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    errors = torch.tensor([0.1, float("inf")])
    lower, upper = score_bounds(torch.tensor([1.0, 0.0]), approx, errors, [2], 0.1)
    assert (float(lower), float(upper)) == (pytest.approx(-1 - 1e-5), pytest.approx(1 + 1e-5))
    estimate, bound = approximate_scores(torch.tensor([1.0, 0.0]), approx, errors, [2], 0.1)
    assert not torch.isnan(estimate).any() and float(bound) == pytest.approx(1 + 1e-5)
    # Stage 2's bound: the unknown error raised to the cap (such a video is always scored).
    raised = raised_scores(torch.tensor([1.0, 0.0]), approx, errors, [2], 0.1)
    assert float(raised) == float(torch.tensor(1e30))


def test_the_bound_used_is_the_lower_of_the_certain_one_and_the_typical_one():
    generator = torch.Generator().manual_seed(5)
    lengths = [6, 4]
    frames, _, _ = ragged_and_padded(generator, lengths, dim=64)
    text = unit_text(torch.randn(64, generator=generator))
    errors = 0.3 * frames.norm(dim=1)
    estimate, upper = approximate_scores(text, frames, errors, lengths, 0.1, spread=2.0)
    _, certain = score_bounds(text, frames, errors, lengths, 0.1)
    wide, wide_upper = approximate_scores(text, frames, errors, lengths, 0.1, spread=1e9)
    torch.testing.assert_close(wide, estimate)
    torch.testing.assert_close(wide_upper, certain)  # a huge spread: the certain bound
    assert bool((estimate < upper).all() and (upper < certain).all())
    # Stage 2's bound is the raised estimate alone: here (below the certain one) the same.
    torch.testing.assert_close(raised_scores(text, frames, errors, lengths, 0.1, spread=2.0),
                               upper, rtol=0, atol=1e-6)
    assert bool((raised_scores(text, frames, errors, lengths, 0.1, spread=1e9) > certain).all())


def test_the_optimistic_estimate_raises_each_frame_by_its_error():
    """Frames e1 and (cos 60, sin 60), text e1, errors 0 and 0.1 at D = 2, spread 1: frame 2's
    t^ . v is raised by 0.1 / sqrt(2); at temperature 1 the weights are softmax of the raised
    cosines and the estimate is sum_f w_f (t^ . v_f + raise_f) / |sum_f w_f v_f|."""
    frames = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    text, errors = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.1])
    raised = torch.tensor([1.0, 0.5 + 0.1 / math.sqrt(2)])
    weights = torch.softmax(raised, 0)
    expected = float((weights * raised).sum() / (weights[:, None] * frames).sum(0).norm())
    estimate, upper = approximate_scores(text, frames, errors, [2], 1.0, spread=1.0)
    plain = torch.softmax(torch.tensor([1.0, 0.5]), 0)
    assert float(estimate) == pytest.approx(float((plain * torch.tensor([1.0, 0.5])).sum() / (
        plain[:, None] * frames).sum(0).norm()), abs=1e-6)
    _, certain = score_bounds(text, frames, errors, [2], 1.0)
    assert float(estimate) < expected < float(certain)
    assert float(upper) == pytest.approx(expected, abs=1e-6)
    assert float(raised_scores(text, frames, errors, [2], 1.0, spread=1.0)) == pytest.approx(
        expected, abs=1e-6)


@pytest.mark.parametrize("lengths, runs, batched", [
    ([3, 3, 3, 3, 5, 5, 5, 5], [(4, 3), (4, 5)], True),           # 2 runs of 4 videos
    ([5] * 9, [(9, 5)], True),                                     # one run
    ([1, 2, 3, 4, 2, 7, 1, 8], [(1, n) for n in [1, 2, 3, 4, 2, 7, 1, 8]], False)])  # sparse
def test_weighted_sums_equal_the_direct_sums_by_runs_or_sparse(lengths, runs, batched,
                                                                monkeypatch):
    from clip_hitchhiker.search.ragged_scoring import _Ragged, _runs

    sparse, original = [], torch.sparse_csr_tensor
    monkeypatch.setattr(torch, "sparse_csr_tensor", lambda *a, **k: sparse.append(1) or
                        original(*a, **k))
    generator = torch.Generator().manual_seed(9)
    frames = torch.randn(sum(lengths), 16, generator=generator)
    weights = [torch.rand(sum(lengths), generator=generator) for _ in range(2)]
    sums = _Ragged(frames, lengths).weighted_sums(*weights)
    bounds = np.cumsum([0] + lengths)
    for w, got in zip(weights, sums):
        expected = torch.stack([(w[a:b, None].double() * frames[a:b].double()).sum(0)
                                for a, b in zip(bounds[:-1], bounds[1:])]).float()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert _runs(torch.tensor(lengths)) == runs and bool(sparse) != batched


def test_videos_of_one_length_take_a_grid_with_the_scatters_values():
    """Every video of one length: sums, maxima and weights over a [C, L] view, equal to the
    scatter path's (maxima exactly, sums to float32 rounding); mixed lengths take the scatter
    path."""
    from clip_hitchhiker.search.ragged_scoring import RaggedLayout

    generator = torch.Generator().manual_seed(11)
    values = torch.randn(12, generator=generator)
    grid, scattered = RaggedLayout([4, 4, 4], "cpu"), RaggedLayout([4, 4, 4], "cpu")
    scattered.length = None
    assert grid.length == 4 and RaggedLayout([4, 3, 5], "cpu").length is None
    assert torch.equal(grid.max(values), values.view(3, 4).amax(1))
    assert torch.equal(grid.max(values), scattered.max(values))
    torch.testing.assert_close(grid.sum(values), scattered.sum(values), rtol=0, atol=1e-6)
    torch.testing.assert_close(grid.sum(values), torch.tensor(
        [float(values[i:i + 4].double().sum()) for i in (0, 4, 8)]), rtol=0, atol=1e-6)
    torch.testing.assert_close(grid.weights(values, 0.1, "queryscoring"),
                               scattered.weights(values, 0.1, "queryscoring"), rtol=0, atol=1e-6)
    expected = torch.softmax(values.view(3, 4) / 0.1, dim=1).view(-1)
    torch.testing.assert_close(grid.weights(values, 0.1, "queryscoring"), expected, rtol=0,
                               atol=1e-6)
    assert torch.equal(grid.weights(values, 0.1, "mean"), torch.full((12,), 0.25))
    # A strided (non-contiguous) view of per-frame values works as its copy does.
    strided = torch.randn(24, generator=generator)[::2]
    assert torch.equal(grid.max(strided), grid.max(strided.contiguous()))
    # Videos of no frames take the scatter path (an empty grid has no maximum).
    assert RaggedLayout([0, 0], "cpu").length is None
