import math

import pytest
import torch
from torch.testing import assert_close

from query_scoring import similarity_meanpooling, similarity_queryscoring


def direct_queryscoring(text, vids, temperature, eps=1e-8, mean="feats", mask=None):
    """The definition, one (text, video) pair at a time: slow and obviously right."""
    scores = torch.empty(text.shape[0], vids.shape[0], dtype=text.dtype)
    for i, t in enumerate(text):
        t_unit = t / torch.clamp(t.norm(), min=eps)
        for j, frames in enumerate(vids):
            if mask is not None:
                frames = frames[mask[j]]
            frame_units = frames / torch.clamp(frames.norm(dim=1, keepdim=True), min=eps)
            s = frame_units @ t_unit
            w = torch.softmax(s / temperature, dim=0)
            if mean == "scores":
                scores[i, j] = (w * s).sum()
            else:
                u = (w[:, None] * frames).sum(0)
                scores[i, j] = t_unit @ (u / torch.clamp(u.norm(), min=eps))
    return torch.stack([row for row in scores])


def direct_meanpooling(text, vids, eps=1e-8):
    pooled = vids.mean(1)
    t = text / text.norm(dim=1, keepdim=True).clamp_min(eps)
    p = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(eps)
    return t @ p.T


def random_inputs(T, V, F, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(T, D, generator=g, dtype=dtype)
    vids = torch.randn(V, F, D, generator=g, dtype=dtype) + 0.5  # frames of one video alike
    return text, vids


def test_hand_computed_one_hot_frames():
    # Query = e1, frames e1 and e2: cosines 1 and 0.
    text = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    vids = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    assert similarity_meanpooling(text, vids).item() == pytest.approx(1 / math.sqrt(2), abs=1e-15)
    # tau = 1: weights e/(e+1), 1/(e+1); u ∝ (e, 1); cosine with e1 = e / sqrt(e^2 + 1).
    expected = math.e / math.sqrt(math.e ** 2 + 1)
    got = similarity_queryscoring(text, vids, temperature=1.0).item()
    assert got == pytest.approx(expected, abs=1e-15)
    # mean="scores": sum_f w_f s_f = e / (e + 1).
    got_scores = similarity_queryscoring(text, vids, temperature=1.0, mean="scores").item()
    assert got_scores == pytest.approx(math.e / (math.e + 1), abs=1e-15)


# 7 texts: Gram form where F (D + 7) < 7 D ((2, 8), (1, 5)), else direct u ((3, 4), (6, 4)).
@pytest.mark.parametrize("F,D", [(3, 4), (6, 4), (1, 5), (2, 8)])
@pytest.mark.parametrize("mean", ["feats", "scores"])
@pytest.mark.parametrize("temperature", [1e-3, 0.1, 1.0, 1e3])
def test_matches_direct_formula_float64(F, D, mean, temperature):
    text, vids = random_inputs(7, 5, F, D)
    expected = direct_queryscoring(text, vids, temperature, mean=mean)
    got = similarity_queryscoring(text, vids, temperature=temperature, mean=mean)
    assert got.dtype == torch.float64
    assert_close(got, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("temperature", [1e-3, 0.01, 0.1, 1.0, 10.0, 1e3])
def test_matches_direct_formula_float32(temperature):
    text, vids = random_inputs(7, 5, 3, 4)
    expected = direct_queryscoring(text, vids, temperature)
    got = similarity_queryscoring(text.float(), vids.float(), temperature=temperature)
    assert got.dtype == torch.float32
    assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_meanpooling_matches_direct_formula():
    text, vids = random_inputs(7, 5, 3, 4)
    assert_close(similarity_meanpooling(text, vids), direct_meanpooling(text, vids),
                 atol=1e-12, rtol=0)


def test_large_temperature_tends_to_mean_pooling():
    text, vids = random_inputs(7, 5, 3, 4)
    mean_pool = similarity_meanpooling(text, vids)
    gaps = [(similarity_queryscoring(text, vids, temperature=t) - mean_pool).abs().max().item()
            for t in (1.0, 10.0, 1e3, 1e6)]
    assert gaps[-1] < 1e-5  # the gap shrinks as 1/temperature
    assert gaps == sorted(gaps, reverse=True)


def test_small_temperature_tends_to_best_frame():
    text, vids = random_inputs(7, 5, 3, 4)
    t_unit = text / text.norm(dim=1, keepdim=True)
    f_unit = vids / vids.norm(dim=2, keepdim=True)
    best_frame = torch.einsum("t d, v f d -> t v f", t_unit, f_unit).amax(dim=2)
    got = similarity_queryscoring(text, vids, temperature=1e-6)
    assert_close(got, best_frame, atol=1e-9, rtol=0)


@pytest.mark.parametrize("mean", ["feats", "scores"])
def test_gradients_match_gradcheck(mean):
    text, vids = random_inputs(3, 2, 3, 4)
    text.requires_grad_(True)
    vids.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t, v: similarity_queryscoring(t, v, temperature=0.5, mean=mean), (text, vids))


def test_gradients_equal_direct_formula_gradients():
    for F, D in [(3, 4), (6, 4)]:
        text, vids = random_inputs(7, 5, F, D)
        weights = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        grads = []
        for fn in (similarity_queryscoring, direct_queryscoring):
            t, v = text.clone().requires_grad_(True), vids.clone().requires_grad_(True)
            (fn(t, v, 0.2) * weights).sum().backward()
            grads.append((t.grad, v.grad))
        assert_close(grads[0], grads[1], atol=1e-10, rtol=0)


def test_tensor_temperature_gets_gradient():
    text, vids = random_inputs(3, 2, 3, 4)
    temperature = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda tau: similarity_queryscoring(text, vids, tau),
                                    (temperature,))


def test_invariances():
    text, vids = random_inputs(7, 5, 3, 4)
    base = similarity_queryscoring(text, vids)
    assert_close(similarity_queryscoring(3.7 * text, vids), base, atol=1e-12, rtol=0)
    permuted = vids[:, torch.tensor([2, 0, 1])]
    assert_close(similarity_queryscoring(text, permuted), base, atol=1e-12, rtol=0)


def test_zero_vectors_give_no_nan():
    text, vids = random_inputs(3, 2, 3, 4)
    text[0] = 0
    vids[1] = 0
    for mean in ("feats", "scores"):
        got = similarity_queryscoring(text, vids, mean=mean)
        assert torch.isfinite(got).all()
        assert (got[0] == 0).all() and (got[:, 1] == 0).all()
    assert torch.isfinite(similarity_meanpooling(text, vids)).all()


@pytest.mark.parametrize("mean", ["feats", "scores"])
def test_video_mask_equals_unpadded_videos(mean):
    text, vids = random_inputs(7, 5, 4, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0]],
                        dtype=torch.bool)
    padded = vids.clone()
    padded[~mask] = float("nan")  # padding contents must not matter
    expected = direct_queryscoring(text, vids, 0.1, mean=mean, mask=mask)
    assert_close(similarity_queryscoring(text, padded, mean=mean, video_mask=mask), expected,
                 atol=1e-10, rtol=0)
    expected_mean = torch.stack([direct_meanpooling(text, vids[j:j + 1, mask[j]])[:, 0]
                                 for j in range(5)], dim=1)
    assert_close(similarity_meanpooling(text, padded, video_mask=mask), expected_mean,
                 atol=1e-12, rtol=0)


@pytest.mark.parametrize("budget", [6, 30])  # 2 texts x 1 video blocks; 7 texts x 1 video
@pytest.mark.parametrize("mean", ["feats", "scores"])
def test_blocked_equals_unblocked(monkeypatch, budget, mean):
    import query_scoring
    text, vids = random_inputs(7, 5, 3, 4)
    mask = torch.ones(5, 3, dtype=torch.bool)
    mask[2, 1:] = False
    whole = similarity_queryscoring(text, vids, mean=mean, video_mask=mask)
    monkeypatch.setattr(query_scoring, "_CHUNK_ELEMENTS", budget)
    assert_close(similarity_queryscoring(text, vids, mean=mean, video_mask=mask), whole,
                 atol=1e-15, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_uses_float32_accumulation(dtype):
    text, vids = random_inputs(7, 5, 3, 64)
    text, vids = text.to(dtype), vids.to(dtype)
    expected = direct_queryscoring(text.double(), vids.double(), 0.1)
    got = similarity_queryscoring(text, vids)
    assert got.dtype == dtype
    # Only the final rounding to the half type is lost.
    assert_close(got.double(), expected, atol=torch.finfo(dtype).eps, rtol=0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(text=torch.zeros(3), vids=torch.zeros(2, 3, 3)), "text_embeds must be \\[T, D\\]"),
    (dict(text=torch.zeros(2, 3), vids=torch.zeros(2, 3)), "vid_embeds must be \\[V, F, D\\]"),
    (dict(text=torch.zeros(2, 4), vids=torch.zeros(2, 3, 3)), "embedding widths differ"),
    (dict(text=torch.zeros(0, 3), vids=torch.zeros(2, 3, 3)), "empty input"),
    (dict(text=torch.zeros(2, 3), vids=torch.zeros(2, 0, 3)), "empty input"),
    (dict(temperature=0.0), "temperature must be finite and > 0"),
    (dict(temperature=-1.0), "temperature must be finite and > 0"),
    (dict(temperature=float("inf")), "temperature must be finite and > 0"),
    (dict(temperature=float("nan")), "temperature must be finite and > 0"),
    (dict(temperature="0.1"), "temperature must be a positive number"),
    (dict(mean="max"), "mean must be 'feats' or 'scores', got 'max'"),
    (dict(video_mask=torch.ones(2, 2, dtype=torch.bool)), "video_mask must be a bool tensor"),
    (dict(video_mask=torch.ones(2, 3)), "video_mask must be a bool tensor"),
    (dict(video_mask=torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.bool)),
     "leaves videos \\[1\\] with no valid frame"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    args = dict(text=torch.ones(2, 3), vids=torch.ones(2, 3, 3))
    args.update(kwargs)
    text, vids = args.pop("text"), args.pop("vids")
    with pytest.raises(ValueError, match=message):
        similarity_queryscoring(text, vids, **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    text, vids = random_inputs(7, 5, 3, 4, dtype=torch.float32)
    expected = similarity_queryscoring(text, vids)
    got = similarity_queryscoring(text.cuda(), vids.cuda())
    assert got.device.type == "cuda"
    assert_close(got.cpu(), expected, atol=1e-5, rtol=0)


def best_frame_cosines(text, vids):
    """The tau -> 0 limit: each text's best cosine with any frame of each video, [T, V]."""
    t = text / text.norm(dim=1, keepdim=True)
    f = vids / vids.norm(dim=2, keepdim=True)
    return torch.einsum("t d, v f d -> t v f", t, f).amax(dim=2)


@pytest.mark.parametrize("dtype,temperature", [(torch.float64, 1e-300), (torch.float64, 1e-12),
                                               (torch.float32, 1e-45), (torch.float32, 1e-39),
                                               (torch.float32, 1e-300), (torch.float32, 1e-7)])
@pytest.mark.parametrize("mean", ["feats", "scores"])
@pytest.mark.parametrize("F,D", [(2, 8), (6, 4)])  # Gram form and direct u (7 texts)
def test_any_positive_temperature_gives_the_best_frame_limit(dtype, temperature, mean, F, D):
    text, vids = random_inputs(7, 5, F, D, dtype=dtype)
    got = similarity_queryscoring(text, vids, temperature, mean=mean)
    assert not torch.isnan(got).any()
    assert_close(got, best_frame_cosines(text, vids), atol=1e-6, rtol=0)


def test_tiny_tensor_temperature_has_finite_gradients():
    text, vids = random_inputs(4, 3, 5, 6)
    text.requires_grad_(True)
    vids.requires_grad_(True)
    temperature = torch.tensor(1e-300, dtype=torch.float64, requires_grad=True)
    similarity_queryscoring(text, vids, temperature).sum().backward()
    for grad in (text.grad, vids.grad, temperature.grad):
        assert torch.isfinite(grad).all()


def test_shifted_logits_equal_the_direct_ones(monkeypatch):
    # The small-temperature form, forced at ordinary temperatures, equals the definition.
    import query_scoring
    monkeypatch.setattr(query_scoring, "_SMALLEST_DIRECT_TEMPERATURE", float("inf"))
    text, vids = random_inputs(7, 5, 3, 4)
    for temperature in (0.01, 0.1, 1.0):
        assert_close(similarity_queryscoring(text, vids, temperature),
                     direct_queryscoring(text, vids, temperature), atol=1e-12, rtol=0)


@pytest.mark.parametrize("text_scale,video_scale", [(1e30, 1.0), (1.0, 1e20), (1e-4, 1e-4),
                                                    (1e30, 1e30)])
@pytest.mark.parametrize("F,D", [(3, 4), (6, 4)])
def test_any_scale_in_float32(text_scale, video_scale, F, D):
    text, vids = random_inputs(7, 5, F, D, dtype=torch.float32)
    expected = similarity_queryscoring(text, vids, 0.1)
    scaled_text, scaled_vids = text * text_scale, vids * video_scale
    assert torch.isfinite(scaled_text).all() and torch.isfinite(scaled_vids).all()
    assert_close(similarity_queryscoring(scaled_text, scaled_vids, 0.1), expected, atol=1e-5,
                 rtol=0)
    assert_close(similarity_queryscoring(scaled_text, scaled_vids, 0.1, mean="scores"),
                 similarity_queryscoring(text, vids, 0.1, mean="scores"), atol=1e-5, rtol=0)
    assert_close(similarity_meanpooling(scaled_text, scaled_vids),
                 similarity_meanpooling(text, vids), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- contrastive loss

def direct_contrastive_loss(text, vids, temperature, logit_scale):
    """The definition: both directions' cross-entropy of the scaled similarity matrix."""
    sims = direct_queryscoring(text, vids, temperature)
    logits = min(logit_scale, 100.0) * sims
    log_rows = torch.log_softmax(logits, dim=1).diagonal()
    log_columns = torch.log_softmax(logits, dim=0).diagonal()
    return -(log_rows.mean() + log_columns.mean()) / 2


@pytest.mark.parametrize("B,F,D", [(5, 3, 4), (3, 7, 4), (1, 2, 3)])
@pytest.mark.parametrize("logit_scale", [1.0, 30.0, 250.0])  # 250 is clamped to 100
def test_contrastive_loss_value_and_gradients(B, F, D, logit_scale):
    from query_scoring import query_scoring_contrastive_loss
    text, vids = random_inputs(B, B, F, D)
    text, vids = text.requires_grad_(True), vids.requires_grad_(True)
    loss = query_scoring_contrastive_loss(text, vids, 0.3, logit_scale)
    expected = direct_contrastive_loss(text, vids, 0.3, logit_scale)
    assert loss.ndim == 0
    assert_close(loss, expected, atol=1e-12, rtol=0)
    got = torch.autograd.grad(loss, (text, vids))
    wanted = torch.autograd.grad(expected, (text, vids))
    for g, w in zip(got, wanted):
        assert_close(g, w, atol=1e-10, rtol=0)


def test_contrastive_loss_learnable_temperature_and_scale_gradcheck():
    from query_scoring import query_scoring_contrastive_loss
    text, vids = random_inputs(4, 4, 3, 5)
    log_temperature = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    text.requires_grad_(True)
    vids.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t, v, a, b: query_scoring_contrastive_loss(t, v, a.exp(), b.exp()),
        (text, vids, log_temperature, log_scale))
    # Clamped at 100: no gradient flows to a scale above it, as in CLIP.
    big = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)  # e^5 > 100
    query_scoring_contrastive_loss(text, vids, 0.1, big.exp()).backward()
    assert big.grad == 0


def test_contrastive_loss_perfect_match_and_bad_shapes():
    from query_scoring import query_scoring_contrastive_loss
    eye = torch.eye(4, dtype=torch.float64)
    loss = query_scoring_contrastive_loss(eye, eye.unsqueeze(1).repeat(1, 2, 1), 0.1, 100.0)
    # Diagonal logits 100, off-diagonal 0: -log(e^100 / (e^100 + 3)) in both directions.
    assert loss.item() == pytest.approx(math.log1p(3 * math.exp(-100)), abs=1e-40)
    with pytest.raises(ValueError, match="same B"):
        query_scoring_contrastive_loss(torch.zeros(3, 4), torch.zeros(2, 5, 4))


def test_contrastive_loss_memory_never_holds_a_pair_by_frame_by_width_tensor():
    from torch.profiler import ProfilerActivity, profile

    from query_scoring import query_scoring_contrastive_loss
    B, F, D = 48, 8, 256
    text, vids = random_inputs(B, B, F, D, dtype=torch.float32)
    text.requires_grad_(True)
    vids.requires_grad_(True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        query_scoring_contrastive_loss(text, vids, 0.1, 100.0).backward()
    largest = max(e.cpu_memory_usage for e in prof.events())
    pair_frame_width = B * B * F * D * 4  # bytes of a [B, B, F, D] float32 tensor: 18.9 MB
    inputs = B * F * D * 4
    assert largest < pair_frame_width / 8
    assert largest <= 4 * inputs  # nothing much bigger than the inputs themselves
