"""Writing the codes of an index (format version 4; frame_codes.py is the codec, index_format.py
the files): at each commit, the codes of the frames files it adds, or, when the index has grown
RETRAIN_GROWTH times past the frames the codec was trained on (while those were fewer than
SETTLED_TRAINING), or has none yet, or is upgraded from version 1 or 2, a codec trained again
and the codes of every frame.

A codes file mirrors the rows of the frames files it covers (a frames file's rows are rows
first..first + N - 1 of its codes file), so a video's codes are found from its table row alone;
rows of videos no longer in the table are zeros, with the "unknown error" code. A row is
uint8 [M + 5]: the M residual codes, the error code, then |v~| (the coded frame's length) as 4
bytes of a little-endian float32 (version 4; version 3 had M + 1 columns). The manifest's
"codes" entry:
    {"codebook", "mean_range": file names, "error_step": float, "trained_on": frames,
     "frames": {frames file: [codes file, first row]}, "means": {means file: [meancodes file,
     first row]}}
"""
import numpy as np
import torch

from clip_hitchhiker.search import frame_codes
from clip_hitchhiker.search import index_format as fmt
from clip_hitchhiker.search.candidate_index import SEGMENT_FRAMES, segment_count

__all__ = ["ERROR_CODES", "NORM_BYTES", "RETRAIN_GROWTH", "commit_codes", "error_norms",
           "stored_norms"]

RETRAIN_GROWTH = 4
# A codec trained on a sample drawn from this many frames or more is kept as the index grows:
# more frames to draw its 32 768 from change little (unless the content drifts), and coding
# every frame again costs a pass over all the frames.
SETTLED_TRAINING = 1 << 20
# The last column of a frame's codes: its error |v - v~| <= code * error_step; UNKNOWN_ERROR:
# at least that (readers take it as unbounded).
ERROR_CODES = 256
UNKNOWN_ERROR = ERROR_CODES - 1
# The last columns of a frame's codes: |v~| as a little-endian float32 (stage 2's softmax needs
# each frame's length; rebuilding the frame to measure it cost 4 times the rest of its scoring).
NORM_BYTES = 4
# error_step: the largest training error over this many steps, so most errors fit the byte.
_ERROR_HEADROOM = 128
_SAMPLE = frame_codes.TRAINING_SAMPLE
_BLOCK = 1 << 16
_OWNERS_BLOCK = 1 << 10   # table rows encoded together


def error_norms(error_codes, error_step):
    """error_codes: uint8 [n]. returns: float32 torch [n], each frame's error bound (inf where
    unknown)."""
    codes = torch.as_tensor(error_codes)
    bounds = codes.float() * error_step
    return torch.where(codes == UNKNOWN_ERROR, torch.full_like(bounds, float("inf")), bounds)


def stored_norms(codes_rows):
    """codes_rows: uint8 [n, M + 1 + NORM_BYTES] rows of a codes file. returns: float32 [n],
    |v~| of each."""
    return np.ascontiguousarray(codes_rows[:, -NORM_BYTES:]).view("<f4")[:, 0].astype(
        np.float32)


def commit_codes(folder, table, entry, new_files, generation):
    """The "codes" entry of the manifest after a commit, its files written.

    table: the committed table; entry: the previous entry (None: none yet, or a version 1
    index); new_files: [(frames file, means file)] this commit wrote. returns: (entry or None
    when the index is too small for a codec, its file names).
    """
    frames = int(_counts(table).sum())
    if entry is None or (frames > RETRAIN_GROWTH * entry["trained_on"]
                         and entry["trained_on"] < SETTLED_TRAINING):
        if frames < frame_codes.MIN_TRAINING_FRAMES:
            return None, []
        return _train_and_encode_all(folder, table, generation)
    live = set(table["frames_file"])
    entry = {**entry, "frames": {f: p for f, p in entry["frames"].items() if f in live},
             "means": {m: p for m, p in entry["means"].items() if m in set(table["means_file"])}}
    codec, owners = _codec_of(folder, entry), _rows_by_file(table)
    for frames_file, means_file in new_files:
        rank = int(frames_file.rsplit("-r", 1)[1].removesuffix(".npy"))  # frames-<g>-r<rank>
        codes_name = fmt.codes_name("codes", generation, rank)
        means_name = fmt.codes_name("meancodes", generation, rank)
        fmt.write_npy(folder / codes_name, _frame_file_codes(
            folder, table, frames_file, owners.get(frames_file, []), codec,
            entry["error_step"]))
        fmt.write_npy(folder / means_name, _mean_file_codes(folder, means_file, codec))
        entry["frames"][frames_file] = [codes_name, 0]
        entry["means"][means_file] = [means_name, 0]
    return entry, _entry_files(entry)


def _entry_files(entry):
    return sorted({entry["codebook"], entry["mean_range"]}
                  | {codes for codes, _ in entry["frames"].values()}
                  | {codes for codes, _ in entry["means"].values()})


def _codec_of(folder, entry):
    load = lambda name: np.load(folder / name, allow_pickle=False)  # noqa: E731
    return frame_codes.Codec.from_arrays(load(entry["mean_range"]), load(entry["codebook"]))


def _train_and_encode_all(folder, table, generation):
    """Train a codec on a sample of the table's frames, then write the codes of every frames
    and means file the table names, each in one file (rows in file-name order)."""
    codec, error_step, trained_on = _train(folder, table)
    codebook, mean_range = (fmt.codes_name(kind, generation) for kind in ("codebook",
                                                                          "meanrange"))
    fmt.write_npy(folder / codebook, codec.centroids)
    fmt.write_npy(folder / mean_range, codec.mean_range())
    entry = {"codebook": codebook, "mean_range": mean_range, "error_step": error_step,
             "trained_on": trained_on, "frames": {}, "means": {}}
    owners = _rows_by_file(table)
    for kind, files, encode in (
            ("codes", sorted(owners),
             lambda name: _frame_file_codes(folder, table, name, owners[name], codec,
                                            error_step)),
            ("meancodes", sorted(set(table["means_file"])),
             lambda name: _mean_file_codes(folder, name, codec))):
        blocks, first = [], 0
        for name in files:
            blocks.append(encode(name))
            entry["frames" if kind == "codes" else "means"][name] = [
                fmt.codes_name(kind, generation), first]
            first += len(blocks[-1])
        fmt.write_npy(folder / fmt.codes_name(kind, generation), np.concatenate(blocks))
    return entry, _entry_files(entry)


def _train(folder, table):
    """(codec, error_step, frames in the table): trained on up to _SAMPLE frames drawn with a
    fixed seed from the table's frames in table order, so that equal tables give equal codecs
    whatever files hold them."""
    counts = _counts(table)
    total = int(counts.sum())
    picks = np.sort(np.random.default_rng(0).permutation(total)[:_SAMPLE])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = np.searchsorted(starts, picks, side="right") - 1  # each pick's table row
    within = picks - starts[rows]
    maps = _Maps(folder)
    frames = _gather(maps, table, "frames_file", np.float16, rows,
                     np.asarray(table["offset"])[rows] + within).astype(np.float32)
    segments = np.unique(np.stack([rows, within // SEGMENT_FRAMES], axis=1), axis=0)
    means = _gather(maps, table, "means_file", np.float32, segments[:, 0],
                    np.asarray(table["mean_row"])[segments[:, 0]] + segments[:, 1])
    segment_of_pick = np.searchsorted(segments[:, 0] * (1 << 32) + segments[:, 1],
                                      rows * (1 << 32) + within // SEGMENT_FRAMES)
    codec = frame_codes.train(frames, means[segment_of_pick], means)
    codes = frame_codes.encode_frames(codec, frames, means[segment_of_pick])
    errors, _ = _errors(codec, frames, frame_codes.encode_means(codec, means), segment_of_pick,
                        codes)
    return codec, float(max(errors.max(), 1e-12)) / _ERROR_HEADROOM, total


def _gather(maps, table, column, dtype, rows, file_rows):
    """The rows file_rows[i] of the file table[column][rows[i]], one read per file."""
    names = np.array([table[column][r] for r in rows.tolist()])
    out = None
    for name in np.unique(names):
        chosen = np.flatnonzero(names == name)
        values = np.asarray(maps.array(str(name), dtype)[file_rows[chosen]])
        if out is None:
            out = np.empty((len(rows), values.shape[1]), dtype)
        out[chosen] = values
    return out


class _Maps:
    """Read-only memory maps of an index's frames and means files, opened once each."""

    def __init__(self, folder):
        self.folder, self._open = folder, {}

    def array(self, name, dtype):
        if name not in self._open:
            self._open[name] = fmt.open_npy(self.folder, name, dtype)
        return self._open[name]

    def frames(self, table, row):
        """float16 [F, D]: table row's frames."""
        first = int(table["offset"][row])
        return self.array(table["frames_file"][row], np.float16)[
            first:first + len(table["frame_times"][row])]

    def means(self, table, row):
        """float32 [ceil(F / 8), D]: table row's segment means."""
        first = int(table["mean_row"][row])
        return self.array(table["means_file"][row], np.float32)[
            first:first + segment_count(len(table["frame_times"][row]))]


def _counts(table):
    times = table["frame_times"]
    return (times.lengths() if hasattr(times, "lengths")
            else np.array([len(t) for t in times], dtype=np.int64))


def _errors(codec, frames, mean_codes, segment_of_frame, codes):
    """(float32 [n] |v - v~|, float32 [n] |v~|) of frames [n, D] (float32) coded as codes [n, M],
    frame i in the segment whose mean's codes are mean_codes[segment_of_frame[i]]."""
    decoded = frame_codes.decode_frames(codec, mean_codes, codes, segment_of_frame)
    return (torch.linalg.vector_norm(torch.from_numpy(frames) - decoded, dim=1).numpy(),
            torch.linalg.vector_norm(decoded, dim=1).numpy())


def _rows_by_file(table):
    """{frames file: [table rows whose frames it holds]}."""
    owners = {}
    for row, name in enumerate(table["frames_file"]):
        owners.setdefault(name, []).append(row)
    return owners


def _frame_file_codes(folder, table, frames_file, owners, codec, error_step):
    """uint8 [rows of frames_file, M + 1 + NORM_BYTES]: the codes of the rows of the table
    rows `owners` (others zeros, with the unknown error and length 0)."""
    maps = _Maps(folder)
    subvectors = len(codec.centroids)
    out = np.zeros((len(maps.array(frames_file, np.float16)), subvectors + 1 + NORM_BYTES),
                   np.uint8)
    out[:, subvectors] = UNKNOWN_ERROR
    for start in range(0, len(owners), _OWNERS_BLOCK):
        block = owners[start:start + _OWNERS_BLOCK]
        counts = [len(table["frame_times"][r]) for r in block]
        rows = np.concatenate([int(table["offset"][r]) + np.arange(c)
                               for r, c in zip(block, counts)])
        frames = np.concatenate([maps.frames(table, r) for r in block]).astype(np.float32)
        means = np.concatenate([maps.means(table, r) for r in block])
        firsts = np.cumsum([0] + [segment_count(c) for c in counts])[:-1]
        segment_of_frame = np.concatenate([f + np.arange(c) // SEGMENT_FRAMES
                                           for f, c in zip(firsts, counts)])
        codes = frame_codes.encode_frames(codec, frames, means[segment_of_frame])
        errors, norms = _errors(codec, frames, frame_codes.encode_means(codec, means),
                                segment_of_frame, codes)
        out[rows, :subvectors] = codes
        # Rounded up (and past float32 rounding): a bound, never below the true error.
        out[rows, subvectors] = np.minimum(np.ceil(errors * (1 + 1e-6) / error_step + 1e-6),
                                           UNKNOWN_ERROR).astype(np.uint8)
        out[rows, subvectors + 1:] = norms.astype("<f4").view(np.uint8).reshape(-1, NORM_BYTES)
    return out


def _mean_file_codes(folder, means_file, codec):
    """uint8 [rows of means_file, ceil(D / 2)]: every row's codes."""
    means = fmt.open_npy(folder, means_file, np.float32)
    return np.concatenate([frame_codes.encode_means(codec, means[i:i + _BLOCK])
                           for i in range(0, len(means), _BLOCK)] or
                          [np.zeros((0, (codec.dim + 1) // 2), np.uint8)])
