"""Video-text similarity by query-scoring and by mean pooling (Bain et al., arXiv 2205.08508).

Pure tensor functions: no files, no device choice. Results follow the inputs' device and dtype;
half-precision inputs are computed in float32.

Letters: T texts, V videos, F frames per video, D embedding width.

Query-scoring (``mean="feats"``, the paper's method), for text t and frames v_1..v_F:
    t^ = t / max(|t|, eps),  v^_f = v_f / max(|v_f|, eps),  s_f = t^ . v^_f
    w = softmax(s / temperature) over the frames
    u = sum_f w_f v_f                      (unnormalised frames, as in the reference release)
    score = t^ . u / max(|u|, eps)

Computing u for every (text, video) pair would need a [T, V, D] tensor (and the reference release
builds [T, V, F, D]: 245 GB at MSR-VTT 1k-A size with 120 frames). Neither is needed:
    t^ . u = sum_f w_f (t^ . v_f)          (the matmul's own output, before dividing by |v_f|)
    |u|^2  = w^T G w, with G = V V^T the video's [F, F] frame Gram matrix.
So everything is one [V*F, T] matmul plus [V, F, T]-sized work, done in blocks of videos.
When F > D, forming u directly (F*D per pair) is cheaper than the Gram form (F*F per pair).
Squares (norms, G) are taken of each video divided by its largest element, and texts likewise,
so inputs of any scale (1e30) neither overflow nor underflow.
"""
import math
import numbers

import torch

# Elements of one [v, F, t] block intermediate. On a CPU, 4 MB in float32: each pass over a block
# stays in the cores' L2 and the allocator's free lists (no fresh page-faulted mmaps), and the
# matmul is still large enough to run at full speed. On an accelerator, larger blocks (128 MB)
# keep the kernel launches few.
_CHUNK_ELEMENTS = 1 << 20
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 25

_MEAN_CHOICES = ("feats", "scores")
# Below this temperature, s / temperature is formed after subtracting each text's best cosine
# (see _shifted_logits), so that any positive temperature works; above it, one product suffices.
_SMALLEST_DIRECT_TEMPERATURE = 1e-6


def similarity_queryscoring(text_embeds, vid_embeds, temperature=0.1, eps=1e-8, mean="feats",
                            video_mask=None):
    """Query-scoring similarity of every text with every video.

    text_embeds: [T, D], any scale (normalised here; norms below eps count as near zero).
    vid_embeds: [V, F, D] per-frame embeddings, unnormalised (their norms weight the pooled
        frame in ``mean="feats"``, as in the reference release).
    temperature: float > 0, or a 0-dim tensor (e.g. a learnable one). Small tends to the best
        single frame, large to mean pooling; any positive finite value works (1e-300 gives
        each text's best-frame cosine).
    mean: "feats" (the paper's method: weighted mean of frame embeddings, then cosine) or
        "scores" (weighted mean of the text-frame cosines, sum_f w_f s_f; the reference release's
        branch multiplies by frame norms instead, which is not a weighted mean of cosines).
    video_mask: optional [V, F] bool; False frames (padding) take no part in the softmax or sums.
    returns: [T, V], dtype promoted from the inputs, on their device. Differentiable in both
        inputs (and a tensor temperature).
    """
    _check_inputs(text_embeds, vid_embeds, video_mask)
    # Decided once here: reading a tensor temperature's value costs a device sync.
    shifted_logits = _check_temperature(temperature) < _SMALLEST_DIRECT_TEMPERATURE
    if mean not in _MEAN_CHOICES:
        raise ValueError(f"mean must be 'feats' or 'scores', got {mean!r}")
    out_dtype = torch.promote_types(text_embeds.dtype, vid_embeds.dtype)
    text_unit, frames, video_mask = _prepare(text_embeds, vid_embeds, eps, video_mask)
    num_videos, num_frames, dim = frames.shape
    budget = _CHUNK_ELEMENTS if frames.device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR
    # Per video, the Gram form costs F*F*D once plus F*F per text, forming u costs F*D per
    # text: the Gram form pays off for many texts (an evaluation), not for one query (search).
    num_texts = text_unit.shape[0]
    use_gram = mean == "feats" and num_frames * (dim + num_texts) < num_texts * dim
    video_scale, inv_frame_norms, gram = _frame_statistics(frames, eps, use_gram, budget)
    padding = None if bool(video_mask.all()) else ~video_mask
    # Without autograd, products can overwrite the block intermediates: fewer passes over memory.
    in_place = not (torch.is_grad_enabled() and any(
        torch.is_tensor(x) and x.requires_grad for x in (text_embeds, vid_embeds, temperature)))

    text_chunk = max(1, budget // num_frames)
    rows = []
    for t0 in range(0, text_unit.shape[0], text_chunk):
        text_block = text_unit[t0:t0 + text_chunk]
        video_chunk = max(1, budget // (num_frames * text_block.shape[0]))
        blocks = []
        for v0 in range(0, num_videos, video_chunk):
            videos = slice(v0, v0 + video_chunk)
            blocks.append(_score_block(
                text_block, frames[videos], video_scale[videos], inv_frame_norms[videos],
                None if gram is None else gram[videos],
                None if padding is None else padding[videos], temperature, shifted_logits, mean,
                eps, in_place))
        rows.append(torch.cat(blocks).T)  # [t, V]
    return torch.cat(rows).to(out_dtype)


def similarity_meanpooling(text_embeds, vid_embeds, eps=1e-8, video_mask=None):
    """Cosine similarity of each text with the mean of each video's unnormalised frame embeddings.

    text_embeds: [T, D]; vid_embeds: [V, F, D]; video_mask: optional [V, F] bool, the mean is
    over the True frames. returns: [T, V], dtype promoted from the inputs.
    """
    _check_inputs(text_embeds, vid_embeds, video_mask)
    out_dtype = torch.promote_types(text_embeds.dtype, vid_embeds.dtype)
    text_unit, frames, video_mask = _prepare(text_embeds, vid_embeds, eps, video_mask)
    frame_counts = video_mask.sum(dim=1, keepdim=True)  # [V, 1]
    pooled_video = frames.sum(dim=1) / frame_counts  # [V, D]; padded frames are zero
    return (text_unit @ _unit(pooled_video, eps).T).to(out_dtype)


def queryscoring_frame_weights(text_embeds, vid_embeds, temperature=0.1, eps=1e-8,
                               video_mask=None):
    """The softmax weights that query-scoring gives each frame: where the text matches.

    text_embeds: [T, D]; vid_embeds: [V, F, D]; temperature and video_mask as in
    similarity_queryscoring (masked frames get weight 0).
    returns: [T, V, F], each [F] row summing to 1, dtype promoted from the inputs (float32 or
        wider inside). Materialises T * V * F values: call it on candidate videos, not a corpus.
    """
    _check_inputs(text_embeds, vid_embeds, video_mask)
    shifted_logits = _check_temperature(temperature) < _SMALLEST_DIRECT_TEMPERATURE
    out_dtype = torch.promote_types(text_embeds.dtype, vid_embeds.dtype)
    text_unit, frames, video_mask = _prepare(text_embeds, vid_embeds, eps, video_mask)
    inv_frame_norms = 1.0 / _unit_scale_norms(frames).clamp_min(eps)  # [V, F]
    padding = None if bool(video_mask.all()) else ~video_mask
    frame_weights, _ = _frame_weights(text_unit, frames, inv_frame_norms, temperature,
                                      shifted_logits, padding)  # [V, F, T]
    return frame_weights.permute(2, 0, 1).to(out_dtype)


def _unit_scale_norms(frames):
    """|v_f| for [V, F, D] frames of any scale (each video divided by its largest element before
    squaring, as in _frame_statistics). returns: [V, F]."""
    scale = frames.abs().amax(dim=(1, 2))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (frames / scale[:, None, None]).norm(dim=-1) * scale[:, None]


def _prepare(text_embeds, vid_embeds, eps, video_mask):
    """Float32-or-wider frames with padding zeroed, unit texts, and the mask (all True if None)."""
    compute_dtype = torch.promote_types(torch.promote_types(text_embeds.dtype, vid_embeds.dtype),
                                        torch.float32)
    frames = vid_embeds.to(compute_dtype)
    if video_mask is None:
        video_mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
    else:
        # Zeroed, so that padding (even NaN padding) cannot leak into sums through 0 * x.
        frames = torch.where(video_mask.unsqueeze(-1), frames, frames.new_zeros(()))
    return _unit(text_embeds.to(compute_dtype), eps), frames, video_mask


def _unit(rows, eps):
    """rows / max(|rows|, eps) for [N, D] rows of any scale: each row is first divided by its
    largest magnitude, so that squaring cannot overflow (1e30) or underflow (1e-30)."""
    scale = rows.abs().amax(dim=1, keepdim=True)
    scaled = rows / scale.clamp_min(torch.finfo(rows.dtype).tiny)  # zero rows stay zero
    # |rows| = scale * |scaled|, so max(|rows|, eps) = scale * max(|scaled|, eps / scale).
    return scaled / scaled.norm(dim=1, keepdim=True).clamp_min(eps / scale)


def _frame_statistics(frames, eps, with_gram, budget):
    """Per-video scale c (largest |element|, 1 for an all-zero video) [V], 1 / max(|v_f|, eps)
    [V, F], and the Gram matrices of v / c [V, F, F] (or None).

    Squares are taken of v / c only, so videos of any scale neither overflow nor underflow;
    the work runs on chunks of videos, so no copy of all the frames is made.
    """
    num_videos, num_frames, dim = frames.shape
    video_scale = frames.abs().amax(dim=(1, 2))
    video_scale = torch.where(video_scale > 0, video_scale, torch.ones_like(video_scale))
    inv_norms, grams = [], []
    chunk = max(1, budget // (num_frames * dim))
    for v0 in range(0, num_videos, chunk):
        scale = video_scale[v0:v0 + chunk]
        scaled = frames[v0:v0 + len(scale)] / scale[:, None, None]
        inv_norms.append(1.0 / (scaled.norm(dim=-1) * scale[:, None]).clamp_min(eps))
        if with_gram:
            grams.append(torch.bmm(scaled, scaled.transpose(1, 2)))  # [v, F, F]
    return video_scale, torch.cat(inv_norms), torch.cat(grams) if with_gram else None


def _score_block(text_unit, frames, video_scale, inv_frame_norms, gram, padding, temperature,
                 shifted_logits, mean, eps, in_place):
    """Scores of t texts against v videos, as [v, t]. Shapes as in _frame_weights; video_scale
    [v] and gram [v, F, F] as _frame_statistics gives them.

    in_place: products may overwrite the intermediates (only when autograd does not record).
    """
    frame_weights, text_dot_frames = _frame_weights(text_unit, frames, inv_frame_norms,
                                                    temperature, shifted_logits, padding)
    if mean == "scores":
        sims = text_dot_frames * inv_frame_norms.unsqueeze(-1)  # s_f
        return (frame_weights * sims).sum(1)
    return _pooled_cosine(frame_weights, text_dot_frames, frames, video_scale, gram, eps,
                          in_place)


def _frame_weights(text_unit, frames, inv_frame_norms, temperature, shifted_logits, padding):
    """Softmax weights over frames and the text-frame dot products t^ . v_f, both [v, F, t].

    text_unit: [t, D]; frames: [v, F, D] unnormalised; inv_frame_norms: [v, F];
    padding: [v, F] bool (True = ignore) or None; shifted_logits: the temperature is below
    _SMALLEST_DIRECT_TEMPERATURE.
    Frames-by-texts layout, so the per-video Gram products below are plain bmm calls.
    """
    num_videos, num_frames, dim = frames.shape
    # One matmul against all frames: the floor every method pays. Unnormalised frames, since
    # t^ . v_f is what the pooled score needs; the cosine s_f is that times 1/|v_f|.
    text_dot_frames = frames.reshape(num_videos * num_frames, dim) @ text_unit.T
    text_dot_frames = text_dot_frames.view(num_videos, num_frames, text_unit.shape[0])
    if not shifted_logits:
        # |s_f / temperature| <= 1e6: softmax's own max subtraction keeps it exact.
        logits = text_dot_frames * (inv_frame_norms / temperature).unsqueeze(-1)
        if padding is not None:
            logits = logits.masked_fill(padding.unsqueeze(-1), float("-inf"))
    else:
        logits = _shifted_logits(text_dot_frames * inv_frame_norms.unsqueeze(-1), temperature,
                                 padding)
    return torch.softmax(logits, dim=1), text_dot_frames


def _shifted_logits(cosines, temperature, padding):
    """(s_f - max_g s_g) / temperature, [v, F, t], for temperatures so small that s / temperature
    would overflow: every logit is <= 0 and the best frame's is exactly 0, so the softmax tends
    to the best frame (ties share) with no inf - inf. A temperature below 100 sqrt(tiny) of the
    dtype is taken as that value: the weights are one-hot there already, and 1 / temperature^2
    (in the gradient) stays finite."""
    if padding is not None:
        cosines = cosines.masked_fill(padding.unsqueeze(-1), float("-inf"))
    smallest = 100 * torch.finfo(cosines.dtype).tiny ** 0.5
    temperature = temperature.clamp_min(smallest) if torch.is_tensor(temperature) \
        else max(temperature, smallest)
    return (cosines - cosines.amax(dim=1, keepdim=True)) / temperature


def _pooled_cosine(frame_weights, text_dot_frames, frames, video_scale, gram, eps, in_place):
    """Cosine of each text with its weighted mean frame u = sum_f w_f v_f, as [v, t].

    frame_weights, text_dot_frames: [v, F, t]; frames: [v, F, D]; video_scale: [v] (c);
    gram: [v, F, F] Gram matrices of v / c, or None to form u directly (cheaper when F > D).
    |u| = c |u / c|, with u / c computed from v / c, so no square overflows.
    in_place: text_dot_frames may be overwritten.
    """
    multiply = torch.Tensor.mul_ if in_place else torch.mul
    text_dot_pooled = multiply(text_dot_frames, frame_weights).sum(1)  # t^ . u
    if gram is not None:
        gram_weights = torch.bmm(gram, frame_weights)
        scaled_norm_sq = multiply(gram_weights, frame_weights).sum(1)  # w^T G w / c^2
    else:
        scaled_frames = frames / video_scale[:, None, None]
        scaled_pooled = torch.bmm(frame_weights.transpose(1, 2), scaled_frames)  # [v, t, D]
        scaled_norm_sq = scaled_pooled.pow(2).sum(-1)
    # The square is clamped before the root, so that its gradient stays finite; max(|u|, eps)
    # then takes over for (nearly) zero pooled frames.
    tiny = torch.finfo(scaled_norm_sq.dtype).tiny
    pooled_norm = scaled_norm_sq.clamp_min(tiny).sqrt() * video_scale.unsqueeze(1)
    return text_dot_pooled / pooled_norm.clamp_min(eps)


def _check_inputs(text_embeds, vid_embeds, video_mask):
    if not (torch.is_tensor(text_embeds) and torch.is_tensor(vid_embeds)):
        raise ValueError("text_embeds and vid_embeds must be torch tensors, got "
                         f"{type(text_embeds).__name__} and {type(vid_embeds).__name__}")
    if text_embeds.ndim != 2:
        raise ValueError(f"text_embeds must be [T, D], got shape {tuple(text_embeds.shape)}")
    if vid_embeds.ndim != 3:
        raise ValueError(f"vid_embeds must be [V, F, D], got shape {tuple(vid_embeds.shape)}")
    if text_embeds.shape[1] != vid_embeds.shape[2]:
        raise ValueError(f"embedding widths differ: text_embeds {tuple(text_embeds.shape)} has "
                         f"D={text_embeds.shape[1]}, vid_embeds {tuple(vid_embeds.shape)} has "
                         f"D={vid_embeds.shape[2]}")
    if 0 in text_embeds.shape or 0 in vid_embeds.shape:
        raise ValueError(f"empty input: text_embeds {tuple(text_embeds.shape)}, "
                         f"vid_embeds {tuple(vid_embeds.shape)}; need T, V, F, D >= 1")
    if not (text_embeds.is_floating_point() and vid_embeds.is_floating_point()):
        raise ValueError(f"embeddings must be floating point, got {text_embeds.dtype} and "
                         f"{vid_embeds.dtype}")
    if video_mask is None:
        return
    expected = tuple(vid_embeds.shape[:2])
    if not torch.is_tensor(video_mask) or tuple(video_mask.shape) != expected \
            or video_mask.dtype != torch.bool:
        got = (f"{video_mask.dtype} {tuple(video_mask.shape)}" if torch.is_tensor(video_mask)
               else type(video_mask).__name__)
        raise ValueError(f"video_mask must be a bool tensor of shape [V, F] = {expected}, "
                         f"got {got}")
    if not bool(video_mask.any(dim=1).all()):
        empty = torch.nonzero(~video_mask.any(dim=1)).flatten().tolist()
        raise ValueError(f"video_mask leaves videos {empty[:10]} with no valid frame; "
                         "drop those videos or mark at least one frame True")


def _temperature_value(temperature):
    return float(temperature.detach()) if torch.is_tensor(temperature) else float(temperature)


def _check_temperature(temperature):
    """ValueError unless temperature is a positive finite number or 0-dim tensor.
    returns: its value as a float."""
    if torch.is_tensor(temperature):
        if temperature.ndim != 0:
            raise ValueError("temperature must be a number or a 0-dim tensor, got shape "
                             f"{tuple(temperature.shape)}")
        value = float(temperature.detach())
    elif isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        value = float(temperature)
    else:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"temperature must be finite and > 0, got {value!r}")
    return value


def query_scoring_contrastive_loss(text_embeds, vid_embeds, temperature=0.1, logit_scale=100.0,
                                   video_mask=None):
    """Symmetric InfoNCE over query-scoring similarities: text i matches video i.

    text_embeds: [B, D]; vid_embeds: [B, F, D]; video_mask: optional [B, F] bool.
    temperature: the query-scoring softmax temperature, float > 0 or a 0-dim tensor (learnable:
        pass e.g. log_temperature.exp()).
    logit_scale: the multiplier of the similarities, CLIP-style: a float or a 0-dim tensor
        (learnable: pass log_scale.exp()), clamped at 100 as CLIP clamps it.
    returns: 0-dim tensor, the mean of the text->video cross-entropy (over the rows of the
        [B, B] logits) and the video->text one (over the columns). Differentiable in every
        input; memory stays at [B, F, B]-sized blocks (no [B, B, F, D] tensor).
    """
    if text_embeds.ndim != 2 or vid_embeds.ndim != 3 or len(text_embeds) != len(vid_embeds):
        raise ValueError(f"need text_embeds [B, D] and vid_embeds [B, F, D] with the same B, got "
                         f"{tuple(text_embeds.shape)} and {tuple(vid_embeds.shape)}")
    scale = logit_scale.clamp(max=100.0) if torch.is_tensor(logit_scale) \
        else min(float(logit_scale), 100.0)
    if not (_temperature_value(scale) > 0):
        raise ValueError(f"logit_scale must be > 0, got {logit_scale!r}")
    logits = scale * similarity_queryscoring(text_embeds, vid_embeds, temperature,
                                             video_mask=video_mask)  # [B, B]
    targets = torch.arange(len(logits), device=logits.device)
    text_to_video = torch.nn.functional.cross_entropy(logits, targets)
    video_to_text = torch.nn.functional.cross_entropy(logits.T, targets)
    return (text_to_video + video_to_text) / 2
