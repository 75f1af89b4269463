"""A compressed copy of every frame embedding, held in memory for stage 2 of search.

Frame f of a video belongs to segment s = f // SEGMENT_FRAMES, whose mean m_s the index already
stores (float32, for stage 1). The copy is two codes:

    the segment mean, 4-bit scalar-quantised per dimension d:
        code c_d in 0..15,  m~_d = low_d + (c_d + 0.5) * step_d
        (two dimensions a byte: dimension 2j in the low nibble, 2j + 1 in the high one)
    the frame's residual r_f = v_f - m_s, product-quantised: its M sub-vectors of D / M
    dimensions each replaced by the nearest of 256 centroids, one byte each
        r~_f = concat_j centroids[j, code_fj]

    v~_f = m~_s + r~_f

At 512-d that is 32 bytes a frame plus 256 bytes a segment (64 bytes a frame with 8-frame
segments), against 1024 bytes of float16. Residuals against the video's own segment mean, not
against global centroids (PLAID's choice): the frames of a segment are alike, so its residuals
are small, and the mean carries what tells near-identical videos apart (measured in
docs/search.md). The codec's arrays are plain .npy files (index_format); this module is pure
computation: numpy in, numpy or torch out.
"""
from dataclasses import dataclass

import numpy as np
import torch

from clip_hitchhiker.search.ragged_scoring import RaggedLayout

__all__ = ["CENTROIDS", "LEVELS", "MIN_TRAINING_FRAMES", "Codec", "CodedFrames", "decode_frames",
           "decode_means", "encode_frames", "encode_means", "frame_norms", "subquantizers",
           "train"]

LEVELS = 16                # 4-bit codes of the segment means
CENTROIDS = 256            # one byte per residual sub-vector
# Fewer frames than this give no codes (stage 2 reads every candidate's frames, which at that
# size costs little): 16 training points per centroid.
MIN_TRAINING_FRAMES = 16 * CENTROIDS
TRAINING_SAMPLE = 1 << 15
_SUBVECTOR_DIMS = 16
_KMEANS_ROUNDS = 10
_ENCODE_BLOCK = 1 << 16   # frames coded together


@dataclass
class Codec:
    """low, step: float32 [D], the segment means' quantiser; centroids: float32 [M, 256, D / M],
    the residuals' product quantiser; columns: None, or (Codec.on) the centroids as a torch
    [M, D / M, 256], contiguous (a query's lookup table is then one batched product, 8 times
    faster here than einsum over the centroids as they are)."""
    low: np.ndarray
    step: np.ndarray
    centroids: np.ndarray
    columns: object = None

    @property
    def dim(self):
        return len(self.low)

    def mean_range(self):
        """float32 [2, D]: low and step, as the index stores them."""
        return np.stack([self.low, self.step]).astype(np.float32)

    @classmethod
    def from_arrays(cls, mean_range, centroids):
        return cls(np.asarray(mean_range[0], np.float32), np.asarray(mean_range[1], np.float32),
                   np.asarray(centroids, np.float32))

    def on(self, device):
        """The codec with its arrays as float32 torch tensors on device (for decoding there)."""
        move = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        centroids = move(self.centroids)
        return Codec(move(self.low), move(self.step), centroids,
                     centroids.transpose(1, 2).contiguous())


def subquantizers(dim):
    """M: sub-vectors of _SUBVECTOR_DIMS dimensions (or the largest divisor of dim below it)."""
    width = max(w for w in range(1, _SUBVECTOR_DIMS + 1) if dim % w == 0)
    return dim // width


def train(frames, frame_means, means, seed=0):
    """The codec for frames like these.

    frames: float32 [n, D], n >= MIN_TRAINING_FRAMES; frame_means: [n, D] each frame's segment
    mean; means: [m, D] segment means. Deterministic for the same inputs and seed.
    """
    import faiss

    frames, frame_means = np.asarray(frames, np.float32), np.asarray(frame_means, np.float32)
    if len(frames) < MIN_TRAINING_FRAMES:
        raise ValueError(f"the codec needs >= {MIN_TRAINING_FRAMES} frames, got {len(frames)}")
    means = np.asarray(means, np.float32)
    low, high = means.min(0), means.max(0)
    step = np.maximum(high - low, 1e-12) / LEVELS
    dim = frames.shape[1]
    quantizer = faiss.ProductQuantizer(dim, subquantizers(dim), 8)
    quantizer.cp.niter = _KMEANS_ROUNDS
    quantizer.cp.seed = seed
    quantizer.cp.max_points_per_centroid = TRAINING_SAMPLE // CENTROIDS
    quantizer.cp.min_points_per_centroid = MIN_TRAINING_FRAMES // CENTROIDS
    quantizer.train(np.ascontiguousarray(frames - frame_means))
    centroids = faiss.vector_to_array(quantizer.centroids).reshape(
        quantizer.M, quantizer.ksub, quantizer.dsub)
    return Codec(low.astype(np.float32), step.astype(np.float32), centroids.astype(np.float32))


def encode_means(codec, means):
    """means: [m, D]. returns: uint8 [m, ceil(D / 2)], two 4-bit codes a byte."""
    means = np.asarray(means, np.float32)
    codes = np.clip(np.floor((means - codec.low) / codec.step), 0, LEVELS - 1).astype(np.uint8)
    if codes.shape[1] % 2:
        codes = np.pad(codes, ((0, 0), (0, 1)))
    return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4))


def encode_frames(codec, frames, frame_means):
    """frames, frame_means: [n, D] (each frame's segment mean). returns: uint8 [n, M], each
    residual sub-vector's nearest centroid (by FAISS's exhaustive search, one sub-vector at a
    time: BLAS products, 2.5 times faster here than its product quantiser's own encoder)."""
    import faiss

    subvectors, _, width = codec.centroids.shape
    searchers = []
    for centroids in codec.centroids:
        searcher = faiss.IndexFlatL2(width)
        searcher.add(np.ascontiguousarray(centroids, np.float32))
        searchers.append(searcher)
    codes = np.empty((len(frames), subvectors), np.uint8)
    for start in range(0, len(frames), _ENCODE_BLOCK):
        residuals = (np.asarray(frames[start:start + _ENCODE_BLOCK], np.float32)
                     - np.asarray(frame_means[start:start + _ENCODE_BLOCK], np.float32))
        for j, searcher in enumerate(searchers):
            _, nearest = searcher.search(np.ascontiguousarray(
                residuals[:, j * width:(j + 1) * width]), 1)
            codes[start:start + len(residuals), j] = nearest[:, 0]
    return codes


def decode_means(codec, codes):
    """codes: uint8 [m, ceil(D / 2)] (numpy or torch, on any device). returns: float32 torch
    [m, D] on the codes' device, the means' cell centres."""
    codes = torch.as_tensor(codes)
    low, step = (torch.as_tensor(a, device=codes.device) for a in (codec.low, codec.step))
    # Written into one float array (3 times faster than stacking the nibbles, then converting).
    levels = torch.empty((len(codes), codes.shape[1], 2), device=codes.device)
    levels[:, :, 0], levels[:, :, 1] = codes & 15, codes >> 4
    return levels.view(len(codes), -1)[:, :len(low)].add_(0.5).mul_(step).add_(low)


def decode_frames(codec, mean_codes, frame_codes, segment_of_frame):
    """v~ of n frames: mean_codes uint8 [m, ceil(D / 2)] of their segments, frame_codes uint8
    [n, M], segment_of_frame int [n] (rows of mean_codes). returns: float32 torch [n, D], on
    the codes' device."""
    codes = torch.as_tensor(frame_codes)
    centroids = torch.as_tensor(codec.centroids, device=codes.device)
    subvectors, count, width = centroids.shape
    means = decode_means(codec, mean_codes)
    segments = torch.as_tensor(segment_of_frame, device=codes.device).long()
    # Sub-vector j of frame f is the sum of two rows of one table, [the centroids as M * 256
    # rows of W; the means cut into rows of W]: centroid row j * 256 + code, mean row
    # segment * M + j. One gather-and-add pass (embedding_bag), not two gathers and an add
    # (1.5-6 times slower); the same two-term sums, so the same values to the bit.
    subvector = torch.arange(subvectors, device=codes.device)
    rows = torch.stack([codes.long() + count * subvector,
                        subvectors * count + segments[:, None] * subvectors + subvector], dim=2)
    table = torch.cat([centroids.view(subvectors * count, width),
                       means.reshape(len(means) * subvectors, width)])
    return torch.nn.functional.embedding_bag(rows.view(-1, 2), table, mode="sum").view(
        len(codes), subvectors * width)


class CodedFrames(RaggedLayout):
    """C videos' frames known by their codes, one video after the other (ragged_scoring's
    layout), with what approximate scoring needs computed from the codes, no frame rebuilt:

        t . v~_f = t . m~_s + sum_j T[j, c_fj],   T[j, c] = t_j . centroids[j, c]
            (the text's lookup table, M x 256 values a query: PLAID's way);
        sum_f w_f v~_f = sum_s W_s m~_s + concat_j sum_f w_f centroids[j, c_fj]
            (W_s: the weight of segment s's frames; one weighted gather-and-add of centroid rows
            per sub-vector, never a [N, D] array);
        |v~_f|: given (the index stores them beside the codes: index_codes).

    Rebuilding the frames and scoring them took 3.7 times as long (docs/search.md).
    codec: its arrays on the codes' device (Codec.on); mean_codes: uint8 [S, ceil(D / 2)] of the
    videos' segments, each video's one after the other; frame_codes: uint8 [N, M];
    segment_of_frame: int [N] (rows of mean_codes); lengths: [C], each >= 1; norms: float32 [N],
    |v~_f|.
    """

    def __init__(self, codec, mean_codes, frame_codes, segment_of_frame, lengths, norms):
        codes = torch.as_tensor(frame_codes)
        device = codes.device
        super().__init__(lengths, device)
        self.means = decode_means(codec, mean_codes)  # [S, D]
        self.dim = self.means.shape[1]
        self.norms = torch.as_tensor(norms, dtype=torch.float32, device=device)
        self.segment_of = torch.as_tensor(segment_of_frame, device=device).long()
        self._centroids = torch.as_tensor(codec.centroids, device=device)  # [M, 256, W]
        self._columns = codec.columns if codec.columns is not None else \
            self._centroids.transpose(1, 2).contiguous()  # [M, W, 256]
        subvectors, count, _ = self._centroids.shape
        total = len(codes)
        # Row j * 256 + c_fj of the centroids as one table, stored sub-vector-major (position
        # j * N + f), so that each (sub-vector, video) is one run: one bag of embedding_bag.
        if device.type == "cpu":  # numpy's strided copy: 0.21 against torch's 0.36 ms at 9900
            rows = np.empty((subvectors, total), np.int64)
            np.copyto(rows, codes.numpy().T)
            rows += count * np.arange(subvectors, dtype=np.int64)[:, None]
            self._rows = torch.from_numpy(rows)
        else:
            self._rows = torch.empty((subvectors, total), dtype=torch.long, device=device)
            self._rows.copy_(codes.T.contiguous())  # transposed as bytes: 5 times faster
            self._rows += count * torch.arange(subvectors, device=device)[:, None]
        self._bags = (total * torch.arange(subvectors, device=device)[:, None]
                      + self.offsets[None, :-1]).view(-1)
        # Each video's segments are consecutive rows of means: its first frame's is the first.
        self._segment_bags = self.segment_of[self.offsets[:-1]]

    def dots(self, text_unit):
        """[N]: t^ . v~_f, from the lookup table of t^ against the centroids."""
        subvectors, _, width = self._centroids.shape
        table = torch.bmm(text_unit.view(subvectors, 1, width), self._columns).view(-1)
        residual = table.take(self._rows.view(-1)).view(subvectors, -1).sum(0)
        return (self.means @ text_unit)[self.segment_of] + residual

    def weighted_sums(self, *weights):
        """weights: [N] each. returns: one [C, D] per weights, sum_f w_f v~_f of each video."""
        subvectors, count, width = self._centroids.shape
        table = self._centroids.view(subvectors * count, width)
        segments = torch.arange(len(self.means), device=self.means.device)
        sums = []
        for w in weights:
            residual = torch.nn.functional.embedding_bag(
                self._rows.view(-1), table, self._bags, mode="sum",
                per_sample_weights=w.repeat(subvectors))  # [M * C, W]
            segment_weights = w.new_zeros(len(self.means)).index_add_(0, self.segment_of, w)
            means = torch.nn.functional.embedding_bag(
                segments, self.means, self._segment_bags, mode="sum",
                per_sample_weights=segment_weights)  # [C, D]
            sums.append(means + residual.view(subvectors, self.count, width).transpose(
                0, 1).reshape(self.count, self.dim))
        return sums


def frame_norms(codec, mean_codes, frame_codes, segment_of_frame):
    """float32 torch [n]: |v~_f| of n frames (decode_frames' arguments)."""
    return torch.linalg.vector_norm(
        decode_frames(codec, mean_codes, frame_codes, segment_of_frame), dim=1)
