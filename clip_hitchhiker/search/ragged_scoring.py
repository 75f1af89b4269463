"""Query-scoring of one text against videos of any lengths, stored ragged: the frames of C videos
one after the other, [N, D] with N = the sum of their lengths, never padded to the longest. So
scoring takes memory proportional to the frames scored, whatever the longest video.

Letters: C videos, N frames in all, D width. For text t and the frames v_f of one video
(query_scoring.py's formula):
    t^ = t / |t|,  s_f = t^ . v_f / |v_f|,  w = softmax(s / temperature),  u = sum_f w_f v_f,
    score = t^ . u / |u|;   by mean pooling: u = mean_f v_f.

`score_bounds` bounds the score of frames known only approximately (stage 2's codes) from each
frame's error norm; see its docstring for the derivation.
"""
import math
import warnings

import numpy as np
import torch

__all__ = ["AGGREGATES", "approximate_scores", "ragged_scores", "raised_scores", "score_bounds",
           "video_of_frame", "video_score"]

AGGREGATES = ("queryscoring", "mean")
_EPS = 1e-8
# Rounding slack of the bounds: they are computed in float32.
_SLACK = 1e-5
# Weighted sums take batched products when the runs of equal lengths hold this many videos on
# average (a product per run costs a few microseconds of overhead), a sparse product otherwise.
_VIDEOS_PER_RUN = 4


def video_of_frame(lengths):
    """lengths: int [C], each >= 1. returns: long [N], each frame's video (0..C-1)."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


class RaggedLayout:
    """How C videos' N frames lie one after the other ([N] per-frame values, videos in order),
    and the per-video sums, maxima and query-scoring weights of per-frame values. What scores
    need beyond it (frame norms, dot products with the text, weighted sums of the frames) comes
    from the frames themselves (_Ragged) or from their codes (frame_codes.CodedFrames)."""

    def __init__(self, lengths, device, dtype=torch.float32):
        lengths = torch.as_tensor(lengths, dtype=torch.long, device=device)
        self.lengths, self.count, self.dtype = lengths, len(lengths), dtype
        self.offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
        # Every video of one length L (as sampling a fixed count of frames gives): per-video
        # values over a [C, L] view, no scatter and no frame-to-video map (0.3-0.5 ms of a
        # 100k query's 13).
        first = int(lengths[0]) if self.count else 0
        self.length = first if first > 0 and bool((lengths == first).all()) else None
        self._video_of = None

    @property
    def video_of(self):
        """long [N]: each frame's video (0..C-1)."""
        if self._video_of is None:
            self._video_of = video_of_frame(self.lengths)
        return self._video_of

    def _grid(self, values):
        """values [N] as [C, L] (every video of length L)."""
        return values.reshape(self.count, self.length)

    def sum(self, values):
        """values [N]. returns: [C], the sum over each video's frames."""
        if self.length is not None:
            return self._grid(values).sum(1)
        return values.new_zeros(self.count).index_add_(0, self.video_of, values)

    def max(self, values):
        if self.length is not None:
            return self._grid(values).amax(1)
        return values.new_full((self.count,), -math.inf).scatter_reduce_(
            0, self.video_of, values, "amax", include_self=True)

    def weights(self, cosines, temperature, aggregate):
        """[N]: each frame's weight in its video: softmax(cosines / temperature) by
        query-scoring, 1 / F by mean pooling."""
        if aggregate == "mean":
            return 1.0 / self.lengths.to(self.dtype)[self.video_of]
        # The best cosine of each video subtracted first, so that any positive temperature
        # works (the softmax does not change).
        if self.length is not None:
            grid = self._grid(cosines)
            exps = torch.exp((grid - grid.amax(1, keepdim=True)) / temperature)
            return (exps / exps.sum(1, keepdim=True)).view(-1)
        exps = torch.exp((cosines - self.max(cosines)[self.video_of]) / temperature)
        return exps / self.sum(exps)[self.video_of]


class _Ragged(RaggedLayout):
    """C videos' frames [N, D] one after the other."""

    def __init__(self, frames, lengths):
        super().__init__(lengths, frames.device, frames.dtype)
        self.frames, self.dim = frames, frames.shape[1]
        self._norms = None

    @property
    def norms(self):
        """[N]: |v_f|."""
        if self._norms is None:
            self._norms = torch.linalg.vector_norm(self.frames, dim=1)
        return self._norms

    def dots(self, text_unit):
        """[N]: t^ . v_f."""
        return self.frames @ text_unit

    def weighted_sums(self, *weights):
        """weights: [N] each. returns: one [C, D] per weights, sum_f w_f v_f of each video, in
        one pass over the frames: a batched product [n, W, L] x [n, L, D] for each run of
        consecutive videos of one length L (videos ordered by length make few runs), or where
        the runs are many, a sparse [C, N] product (a third of the time of forming w_f v_f and
        adding them up; the batched one took 1/1.4 of its time at 16 frames a video, 1/4.9
        at 60)."""
        runs = _runs(self.lengths)
        if len(runs) <= max(1, self.count // _VIDEOS_PER_RUN):
            stacked = torch.stack(weights)  # [W, N]
            sums, first = [], 0
            for count, length in runs:
                last = first + count * length
                sums.append(torch.bmm(
                    stacked[:, first:last].reshape(len(weights), count, length).transpose(0, 1),
                    self.frames[first:last].view(count, length, -1)))  # [count, W, D]
                first = last
            return torch.cat(sums).unbind(1)
        total = len(self.frames)
        crow = torch.cat([self.offsets] + [self.offsets[1:] + i * total
                                           for i in range(1, len(weights))])
        columns = torch.arange(total, device=self.frames.device).repeat(len(weights))
        with warnings.catch_warnings():  # "sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(crow, columns, torch.cat(weights),
                                             (len(weights) * self.count, total),
                                             check_invariants=False)
            return (matrix @ self.frames).split(self.count)


def _runs(lengths):
    """[(count, length)]: lengths [C] as runs of equal consecutive values."""
    values, counts = torch.unique_consecutive(lengths, return_counts=True)
    return list(zip(counts.tolist(), values.tolist()))


def _check_aggregate(aggregate):
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")


def _cosine(vectors, text_unit):
    """[C]: t^ . u / |u| of each row u of vectors [C, D]."""
    return vectors @ text_unit / torch.linalg.vector_norm(vectors, dim=1).clamp_min(_EPS)


def unit_text(text_embed):
    """text_embed: [D]. returns: float32 [D] of length 1 (query_scoring's t^)."""
    text_embed = torch.as_tensor(text_embed, dtype=torch.float32)
    return text_embed / torch.linalg.vector_norm(text_embed).clamp_min(_EPS)


def ragged_scores(text_unit, frames, lengths, temperature=0.1, aggregate="queryscoring"):
    """Scores of one text against C videos: query_scoring's similarity_queryscoring (or
    similarity_meanpooling) of each, to float32 rounding (tested within 1e-6).

    text_unit: float32 [D], unit length; frames: float32 [N, D], the videos' frames one video
    after the other (unnormalised, as CLIP gives them); lengths: [C] frames per video, each >= 1.
    returns: float32 [C].
    """
    _check_aggregate(aggregate)
    ragged = _Ragged(frames, lengths)
    cosines = None if aggregate == "mean" else (
        frames @ text_unit / ragged.norms.clamp_min(_EPS))
    pooled, = ragged.weighted_sums(ragged.weights(cosines, temperature, aggregate))
    return _cosine(pooled, text_unit)


def video_score(text_unit, frames, temperature=0.1, aggregate="queryscoring"):
    """One video's score and its frames' query-scoring weights (whatever the aggregate: they
    give the moment), computed from its frames [F, D] alone. returns: (float, float32 [F])."""
    _check_aggregate(aggregate)
    # The formulas of _Ragged for one video, in numpy on the CPU (a search scores each of its k
    # hits this way: 23 us a video of 60 x 512 against torch's 41, per-call overheads).
    frames = frames.detach().cpu().numpy()
    text = text_unit.detach().cpu().numpy()
    cosines = frames @ text / np.maximum(np.sqrt(np.einsum("fd,fd->f", frames, frames)), _EPS)
    exps = np.exp((cosines - cosines.max()) / np.float32(temperature))
    weights = exps / exps.sum()
    weights_used = np.full_like(weights, 1.0 / len(frames)) if aggregate == "mean" \
        else weights
    pooled = weights_used @ frames
    score = pooled @ text / max(np.sqrt(pooled @ pooled), np.float32(_EPS))
    return float(score), torch.from_numpy(weights)


def score_bounds(text_unit, frames, error_norms, lengths, temperature=0.1,
                 aggregate="queryscoring"):
    """Certain bounds on the scores of videos whose frames are known up to an error: each true
    frame v_f lies within error_norms[f] (rho_f) of frames[f] (v~_f).

    Derivation (per video; t^ unit):
    1. The angle between v_f and v~_f is at most phi_f = asin(rho_f / |v~_f|) (any angle when
       rho_f >= |v~_f|), so the cosine s_f = cos angle(t^, v_f) lies in
       [cos(theta~_f + phi_f), cos(theta~_f - phi_f)], angles clamped to [0, pi].
    2. The logits s_f / temperature then move by d_f within [d-_f, d+_f]; with
       delta = max d+ - min d-, the weights move by at most
       ||w - w~||_1 <= L = 2 tanh(delta / 4)
       (w_f / w~_f = e^d_f / sum_g w~_g e^d_g; the worst case puts every d_f at either end).
    3. u = sum_f w_f v_f lies in a ball around u~ = sum_f w~_f v~_f of radius
       r = L R + sum_f w~_f rho_f + (L / 2) (max rho - min rho),
       R = max_f |v~_f - u~| (<= max_f |v~_f| + |u~|, what is computed): moving weight L / 2
       between frames moves u~ by at most L R, and the frames' own errors add their weighted
       mean.
    4. Every vector of a ball of radius r < |u~| around u~ is within asin(r / |u~|) of u~'s
       direction, so score = cos angle(t^, u) lies in [cos(theta_u + alpha), cos(theta_u -
       alpha)] with alpha = asin(r / |u~|); a ball that holds the origin allows [-1, 1].
    Mean pooling has fixed weights: r = mean_f rho_f.

    frames: float32 [N, D]; error_norms: float32 [N] (inf: unknown); lengths: [C].
    returns: (lower [C], upper [C]), float32, widened by 1e-5 for float32 rounding.
    """
    _check_aggregate(aggregate)
    ragged = _Ragged(frames, lengths)
    dots = frames @ text_unit
    weights = ragged.weights(dots / ragged.norms.clamp_min(_EPS), temperature, aggregate)
    pooled, = ragged.weighted_sums(weights)
    return _bounds(ragged, dots, weights, pooled, text_unit, _finite(error_norms, ragged),
                   temperature, aggregate)


def _finite(error_norms, source):
    """Unknown (infinite) errors as a finite huge value, so that a zero weight times one is 0.
    source: the frames' _Ragged or CodedFrames (their dtype and device)."""
    norms = source.norms
    errors = torch.as_tensor(error_norms, dtype=norms.dtype, device=norms.device)
    return errors.clamp(max=1e30)


def _bounds(ragged, dots, weights, pooled, text_unit, errors, temperature, aggregate):
    """score_bounds' steps 1-4, from what scoring the approximate frames computed."""
    radius = ragged.sum(weights * errors)
    length = torch.linalg.vector_norm(pooled, dim=1).clamp_min(_EPS)
    if aggregate != "mean":
        norms = ragged.norms.clamp_min(_EPS)
        angle = torch.arccos((dots / norms).clamp(-1, 1))
        spread = torch.where(errors < norms, torch.arcsin((errors / norms).clamp(max=1)),
                             torch.full_like(norms, math.pi))
        cosine = torch.cos(angle)
        rise = (torch.cos((angle - spread).clamp(0, math.pi)) - cosine) / temperature
        fall = (cosine - torch.cos((angle + spread).clamp(0, math.pi))) / temperature
        moved = 2 * torch.tanh((ragged.max(rise) + ragged.max(fall)) / 4)  # L
        moved = torch.where(ragged.lengths > 1, moved, torch.zeros_like(moved))  # w = (1)
        reach = ragged.max(ragged.norms) + length  # R, at most
        error_range = ragged.max(errors) + ragged.max(-errors)
        radius = radius + moved * reach + moved / 2 * error_range
    theta = torch.arccos((pooled @ text_unit / length).clamp(-1, 1))
    alpha = torch.where(radius < length, torch.arcsin((radius / length).clamp(max=1)),
                        torch.full_like(length, math.pi))
    upper = torch.cos((theta - alpha).clamp(0, math.pi)) + _SLACK
    lower = torch.cos((theta + alpha).clamp(0, math.pi)) - _SLACK
    return lower, upper


def approximate_scores(text_unit, frames, error_norms, lengths=None, temperature=0.1,
                       aggregate="queryscoring", spread=2.0):
    """An estimate of each video's score from approximate frames v~_f, and an upper bound: the
    smaller of the certain bound and the raised estimate (stage 2 prunes by the raised estimate
    alone: raised_scores).

    The certain upper bound of score_bounds lets each frame's error point straight at the text,
    and is loose: at 512-d an error of random direction has about 1/sqrt(D) of its norm along
    any one direction. The bound used is the smaller of the certain one and an optimistic
    estimate: the score with each frame's t^ . v~_f raised by spread * rho_f / sqrt(D) (its
    error, taken to lean towards the text by `spread` typical lengths), weights and all. A frame
    coded poorly (large rho_f) may match better than its code says, and the softmax then moves
    weight to it: the videos whose matching frames are coded worst are raised most
    (docs/search.md gives the coverage measured).

    frames: float32 [N, D] with lengths [C], or the frames' codes (frame_codes.CodedFrames, which
    knows its lengths: the same values computed from the codes, without rebuilding a frame);
    error_norms: [N] (inf: unknown). returns: (estimate [C], upper [C]), float32.
    """
    _check_aggregate(aggregate)
    ragged = frames if lengths is None else _Ragged(frames, lengths)
    errors = _finite(error_norms, ragged)
    norms = ragged.norms.clamp_min(_EPS)
    dots = ragged.dots(text_unit)
    raised = dots + spread * errors / math.sqrt(ragged.dim)
    weights = ragged.weights(dots / norms, temperature, aggregate)
    raised_weights = ragged.weights(raised / norms, temperature, aggregate)
    pooled, raised_pooled = ragged.weighted_sums(weights, raised_weights)
    _, certain = _bounds(ragged, dots, weights, pooled, text_unit, errors, temperature,
                         aggregate)
    optimistic = _raised_score(ragged, raised, raised_weights, raised_pooled)
    return _cosine(pooled, text_unit), torch.minimum(certain, optimistic)


def raised_scores(text_unit, frames, error_norms, lengths=None, temperature=0.1,
                  aggregate="queryscoring", spread=2.0):
    """approximate_scores' raised estimate alone (its upper bound without the certain cap):
    what stage 2 prunes by, scoring a candidate exactly unless this is below the k-th best
    exact score. The certain cap costs a second weighted sum of the frames (a third of the
    time) and, some 20 times too wide at 512-d, never was the lower one on bench_search.py's
    100k videos (300 queries: the same finalists, the same hits).
    Arguments as approximate_scores'. returns: float32 [C]."""
    _check_aggregate(aggregate)
    ragged = frames if lengths is None else _Ragged(frames, lengths)
    errors = _finite(error_norms, ragged)
    raised = ragged.dots(text_unit) + spread * errors / math.sqrt(ragged.dim)
    raised_weights = ragged.weights(raised / ragged.norms.clamp_min(_EPS), temperature,
                                    aggregate)
    raised_pooled, = ragged.weighted_sums(raised_weights)
    return _raised_score(ragged, raised, raised_weights, raised_pooled)


def _raised_score(ragged, raised, raised_weights, raised_pooled):
    """[C]: sum_f w'_f (t^ . v~_f + raise_f) / |sum_f w'_f v~_f| (huge where an error is
    unknown: such a video is always scored exactly)."""
    return (ragged.sum(raised_weights * raised) / torch.linalg.vector_norm(
        raised_pooled, dim=1).clamp_min(_EPS)).clamp(max=1e30)
