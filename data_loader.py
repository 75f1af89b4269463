"""MSR-VTT and custom video datasets: splits, frame sampling, decoding, preprocessing.

Everything that reads datasets, videos (read_video: decord, PyAV or torchcodec) and CSVs
(pandas); the download and extraction machinery is in clip_hitchhiker.downloads.

Layout of the release's zip (https://github.com/m-bain/frozen-in-time), extracted under data_root:
    MSRVTT/annotation/MSR_VTT.json                        COCO-style captions
    MSRVTT/videos/all/<video_id>.mp4
    MSRVTT/high-quality/structured-symlinks/
        val_list_jsfusion.txt, jsfusion_val_caption_idx.pkl   (1k-A)
        test_list_miech.txt, test_list_full.txt               (one video id per line)
"""
import csv
import json
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from clip_hitchhiker.datasets import DatasetEntry, Reference, UrlOption, register
from clip_hitchhiker.downloads import COMPLETE_MARKER, fetch_and_extract, load_restricted_pickle
from clip_hitchhiker.reporting import PUBLISHED
from clip_hitchhiker.video import decoders as video_decoders
from clip_hitchhiker.errors import DatasetError, VideoDecodeError

__all__ = ["COMPLETE_MARKER", "CSVDataset", "DatasetError", "FramePreprocess", "MSRVTTDataset",
           "MSRVTT_URL", "SPLITS", "VideoDataset", "VideoDecodeError", "center_crop",
           "collate_videos", "download_msrvtt", "load_msrvtt_split", "load_msrvtt_training",
           "read_video", "read_video_decord", "read_video_frames", "read_video_times",
           "resize_shorter_side", "sample_frame_indices"]

MSRVTT_URL = "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"
SPLITS = ("jsfusion", "miech", "full-test")
_SPLIT_LISTS = {"jsfusion": "val_list_jsfusion.txt", "miech": "test_list_miech.txt",
                "full-test": "test_list_full.txt"}
_JSFUSION_CAPTION_INDEX = "jsfusion_val_caption_idx.pkl"


# ----------------------------------------------------------------------------------------------
# Download


def download_msrvtt(data_root="./data", url=MSRVTT_URL, progress=True, retries=3):
    """Download and extract MSR-VTT under data_root unless a complete copy is already there.

    Resumes a partial download (``MSRVTT.zip.part``), checks every entry's CRC, refuses unsafe
    entries, and marks the extracted folder complete only at the end.
    returns: Path of data_root/MSRVTT.
    """
    return fetch_and_extract(url, data_root, "MSRVTT.zip", "MSRVTT", progress=progress,
                             retries=retries)


# ----------------------------------------------------------------------------------------------
# Splits


def load_msrvtt_split(data_root="./data", split="jsfusion"):
    """One row per query: columns video_id, caption; videos in sorted id order, captions together.

    "jsfusion" (1k-A): 1000 videos x the caption the release's .pkl picks; "miech": the same
    videos x all their captions; "full-test": 2990 videos x all their captions.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(data_root) / "MSRVTT"
    captions = _captions_by_video(root / "annotation" / "MSR_VTT.json")
    split_dir = root / "high-quality" / "structured-symlinks"
    video_ids = sorted(_read_id_list(split_dir / _SPLIT_LISTS[split]))
    missing = [v for v in video_ids if v not in captions]
    if missing:
        raise DatasetError(f"{len(missing)} videos of {split_dir / _SPLIT_LISTS[split]} have no "
                           f"caption in MSR_VTT.json, e.g. {missing[:3]}; the dataset is "
                           "inconsistent, delete it and download again")
    if split == "jsfusion":
        rows = _jsfusion_rows(video_ids, captions, split_dir / _JSFUSION_CAPTION_INDEX)
    else:
        rows = [(v, c) for v in video_ids for c in captions[v]]
    return pd.DataFrame(rows, columns=["video_id", "caption"])


def load_msrvtt_training(data_root="./data"):
    """The 9k training videos (train_list_jsfusion.txt) and all their captions.
    returns: (video ids in the list's order, {video id: [captions]})."""
    root = Path(data_root) / "MSRVTT"
    video_ids = _read_id_list(root / "high-quality" / "structured-symlinks" /
                              "train_list_jsfusion.txt")
    captions = _captions_by_video(root / "annotation" / "MSR_VTT.json")
    missing = [v for v in video_ids if v not in captions]
    if missing:
        raise DatasetError(f"{len(missing)} training videos have no caption in MSR_VTT.json, "
                           f"e.g. {missing[:3]}; the dataset is inconsistent, delete it and "
                           "download again")
    return video_ids, {v: captions[v] for v in video_ids}


def _captions_by_video(annotation_path):
    """{video_id: [captions in the json's order]}."""
    try:
        with open(annotation_path, encoding="utf-8") as f:
            annotations = json.load(f)["annotations"]
    except FileNotFoundError as e:
        raise DatasetError(f"missing {annotation_path}; download MSR-VTT (the default) or set "
                           "--data_root to the folder that holds MSRVTT/") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{annotation_path} is not the release's COCO-style annotation file "
                           f"({e})") from e
    captions = {}
    for entry in annotations:
        captions.setdefault(entry["image_id"], []).append(entry["caption"])
    return captions


def _read_id_list(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError as e:
        raise DatasetError(f"missing split list {path}; the MSR-VTT folder is incomplete, delete "
                           "it and download again") from e


def _jsfusion_rows(video_ids, captions, index_path):
    caption_index = load_restricted_pickle(index_path)
    if not isinstance(caption_index, dict):
        raise DatasetError(f"{index_path} should map video id -> caption index, got "
                           f"{type(caption_index).__name__}")
    rows = []
    for video_id in video_ids:
        if video_id not in caption_index:
            raise DatasetError(f"{index_path} has no caption index for {video_id}")
        index = int(caption_index[video_id])
        if not 0 <= index < len(captions[video_id]):
            raise DatasetError(f"{index_path} picks caption {index} of {video_id}, which has "
                               f"{len(captions[video_id])}")
        rows.append((video_id, captions[video_id][index]))
    return rows


# ----------------------------------------------------------------------------------------------
# Frames


def sample_frame_indices(num_available, num_frames):
    """The release's rule: num_frames equal segments of [0, num_available), each one's midpoint.

    Segment edges are numpy.linspace(0, n, num_frames + 1).astype(int); indices repeat when the
    video has fewer frames than asked. returns: list of num_frames ints.
    """
    if num_available < 1:
        raise ValueError(f"num_available must be >= 1, got {num_available}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    edges = np.linspace(0, num_available, num_frames + 1).astype(int)
    return [int((start + stop) // 2) for start, stop in zip(edges[:-1], edges[1:])]


def check_video_file(video_path):
    """Raise VideoDecodeError unless video_path is a file: a folder named like a video is not
    one, and is not "missing" either."""
    if os.path.isdir(video_path):
        raise VideoDecodeError(f"{video_path} is a folder, not a video file; point at the video "
                               "itself")
    if not os.path.isfile(video_path):
        raise VideoDecodeError(f"video file not found: {video_path}")


def read_video(video_path, num_frames=None, num_threads=1, sample=sample_frame_indices, *,
               decoder="decord", fps=None, max_frames=None, keyframes=False, device="cpu"):
    """Decode a video's sampled frames: the one place that decodes (clip_hitchhiker.video.decoders
    holds the decoders and the rules they share).

    By count (num_frames): sample(num_available, num_frames) -> indices picks them (the
    release's midpoints; training draws a random frame per segment), on the frame count every
    decoder takes the same way (the stream's packets, as decord counts them). By time (fps,
    max_frames): the frame nearest the midpoint of each 1/fps-second segment
    (clip_hitchhiker.video.sampling), each frame once; keyframes=True takes the nearest key frame
    instead and decodes nothing else (approximate, with true times).
    decoder: "decord" (the release's), "pyav", "torchcodec", or "auto": decord when it imports,
    and PyAV for a video decord cannot read (recorded in the info's "fallback").
    device: where torchcodec decodes ("cpu", or "cuda"/"cuda:N"); the others decode on the CPU.
    returns: (uint8 [S, 3, H, W] RGB, info: {"decoder": the one that read it, "frames": the
    frame count, "indices": [S] the decoded frame numbers, "resolution": [H, W]}, plus
    "times" [S] seconds from the first frame and "duration" for sampling by time) - the run
    manifest's entry, which tells two decoders, builds or copies of a video apart.
    """
    if (num_frames is None) == (fps is None):
        raise ValueError(f"give num_frames or fps, one of them, got num_frames={num_frames!r} "
                         f"and fps={fps!r}")
    if keyframes and fps is None:
        raise ValueError("keyframes=True samples by time: give fps (and max_frames)")
    request = {"num_frames": num_frames, "sample": sample} if fps is None else \
        {"fps": fps, "max_frames": max_frames, "keyframes": keyframes}
    chosen = video_decoders.resolve_decoder(decoder)
    check_video_file(video_path)
    try:
        return video_decoders.decode_frames(chosen, video_path, request, num_threads, device)
    except VideoDecodeError as decord_error:
        if decoder != "auto" or chosen != "decord":
            raise
        failure = decord_error
    # auto: PyAV reads what decord cannot (some small frame sizes); the manifest records it.
    frames, info = video_decoders.decode_frames("pyav", video_path, request, num_threads, device)
    return frames, {**info, "fallback": f"decord failed: {failure}"}


def read_video_times(video_path, fps=1.0, max_frames=None, *, decoder="pyav", keyframes=False,
                     device="cpu"):
    """read_video by time: the frames nearest the midpoints of 1/fps-second segments (at most
    max_frames segments), or with keyframes the nearest key frames; decoders seek between
    frames that lie far apart, so that hours of video stay cheap and in bounded memory.

    returns: (uint8 [S, 3, H, W] RGB, {"decoder", "frames": the video's frame count, "indices":
    [S] frame numbers in presentation order, "times": [S] seconds from the first frame,
    "duration": seconds, "resolution": [H, W]}). A target rate above the video's frame rate
    gives each frame once (S can be below the segment count).
    """
    return read_video(video_path, decoder=decoder, fps=fps, max_frames=max_frames,
                      keyframes=keyframes, device=device)


def read_video_frames(video_path, num_frames, num_threads=1, decoder="decord"):
    """Decode the sampled frames. returns: uint8 [num_frames, 3, H, W], RGB."""
    return read_video(video_path, num_frames, num_threads, decoder=decoder)[0]


def read_video_decord(video_path, num_frames, num_threads=1):
    """The release's reader: returns float [num_frames, 3, H, W] in [0, 1], RGB."""
    return read_video_frames(video_path, num_frames, num_threads).float() / 255


class FramePreprocess:
    """CLIP's image preprocessing on decoded frame tensors, as the release ran it.

    Built from the ``preprocess`` Compose that ``clip.load`` (or open_clip) returns, of which it
    takes the numbers (resize size and interpolation, crop size, mean, std) and applies them
    with its own float operations, so the result does not depend on the installed
    torchvision's defaults. Two layouts are understood:
        Resize(int) + CenterCrop (CLIP's, open_clip's "shortest"): the shorter side to
            ``resize`` (the longer one to int(resize * long / short)), then a centre crop
            placed as torchvision places it;
        Resize((s, s)) and no crop (open_clip's "squash", e.g. SigLIP): both sides to s.
    Resizes are F.interpolate(align_corners=False), with antialias only if asked; then
    normalisation. antialias=False is the release-era resize: every torchvision before 0.17
    resized tensors without antialias, and the published figures were made so.
    antialias=True is closer to the PIL resize CLIP was trained with (an ablation).
    dtype: the output dtype; float16 halves what DataLoader workers send when the model is fp16.
    Runs on the frames' device: in DataLoader workers, or on the model's device.
    """

    def __init__(self, preprocess, dtype=torch.float32, antialias=False):
        # Imported here: torchvision's import takes 1.5 s (it loads torch._dynamo), which every
        # command that never preprocesses a frame (search, info, --help) would pay.
        from torchvision.transforms import CenterCrop, Normalize, Resize

        transforms = getattr(preprocess, "transforms", [])
        resize = [t for t in transforms if isinstance(t, Resize)]
        crop = [t for t in transforms if isinstance(t, CenterCrop)]
        normalize = [t for t in transforms if isinstance(t, Normalize)]
        if len(resize) != 1 or len(crop) > 1 or len(normalize) != 1:
            raise ValueError("preprocess must be the torchvision Compose that clip.load or "
                             "open_clip returns (one Resize, at most one CenterCrop, one "
                             f"Normalize), got {preprocess!r}")
        size = resize[0].size
        self.squash = not isinstance(size, int) and len(size) == 2
        self.resize = _single_size(size, "Resize")
        self.crop = _single_size(crop[0].size, "CenterCrop") if crop else self.resize
        if not crop and not self.squash:
            raise ValueError(f"a Resize of the shorter side ({size}) needs a CenterCrop")
        if self.crop > self.resize:
            raise ValueError(f"CenterCrop {self.crop} is larger than Resize {self.resize}")
        self.interpolation = resize[0].interpolation.value  # "bicubic", "bilinear", ...
        self.mean = tuple(float(m) for m in normalize[0].mean)
        self.std = tuple(float(s) for s in normalize[0].std)
        self.antialias = bool(antialias)
        self.dtype = dtype

    def __call__(self, frames):
        """frames: uint8 [F, 3, H, W] on any device. returns: [F, 3, crop, crop] in self.dtype."""
        frames = frames.float() / 255
        if self.squash:
            frames = _interpolate(frames, (self.resize, self.resize), self.interpolation,
                                  self.antialias)
        else:
            frames = resize_shorter_side(frames, self.resize, self.interpolation, self.antialias)
        frames = center_crop(frames, self.crop)
        mean = torch.tensor(self.mean, device=frames.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=frames.device).view(3, 1, 1)
        return ((frames - mean) / std).to(self.dtype)

    def describe(self):
        """A string that changes whenever the output would (for cache keys)."""
        layout = f"squash to {self.resize}" if self.squash else f"resize {self.resize}"
        return (f"{layout} {self.interpolation} antialias={self.antialias}, "
                f"centre crop {self.crop}, mean {self.mean}, std {self.std}, {self.dtype}")


def resize_shorter_side(frames, size, interpolation="bicubic", antialias=False):
    """frames: float [F, 3, H, W]. The shorter side to size, the longer to int(size * long /
    short), as torchvision computes it; frames whose shorter side is already size come back as
    they are. No clamping (float frames, as the release). returns: [F, 3, H', W']."""
    height, width = frames.shape[-2:]
    if min(height, width) == size:
        return frames
    if width < height:
        new_height, new_width = int(size * height / width), size
    else:
        new_height, new_width = size, int(size * width / height)
    return _interpolate(frames, (new_height, new_width), interpolation, antialias)


def _interpolate(frames, size, interpolation, antialias):
    """frames: float [F, 3, H, W] resized to size (h, w), unless already that size."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    align = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(frames, size=size, mode=interpolation,
                                           antialias=antialias, **align)


def center_crop(frames, size):
    """frames: [..., H, W] with H, W >= size. The centre size x size window, its corner at
    int(round((H - size) / 2)) as torchvision places it. returns: [..., size, size]."""
    height, width = frames.shape[-2:]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return frames[..., top:top + size, left:left + size]


def _single_size(size, name):
    if isinstance(size, int):
        return size
    if len(size) == 1 or (len(size) == 2 and size[0] == size[1]):
        return int(size[0])
    raise ValueError(f"{name} size must be one number (a square crop), got {size}")


# ----------------------------------------------------------------------------------------------
# Datasets


class VideoDataset(Dataset):
    """One item per video: {"index", "video_id", "video", "error", "decoded"} ("decoded": what
    read_video decoded, {} for a failed video).

    queries: DataFrame with one row per caption (video_id, caption), captions of a video together.
    preprocess: a FramePreprocess (or clip's Compose) applied here, in the DataLoader workers,
        giving "video" [F, 3, R, R]; or None to give the decoded uint8 frames [F, 3, H, W], for
        preprocessing on the model's device (videos may then differ in H, W: see collate_videos).
    on_error: what a video that fails to decode does to its item. "raise" raises the
        VideoDecodeError; "report" gives zeros and the message in "error" ("" when decoded), so
        that the caller decides for the whole run (the CLI does, in one place).
    """

    task = "retrieval"  # or "classification" (see clip_hitchhiker.datasets.charades)
    # read_video's decoder and where it decodes; set_decoder changes them (build_dataset does).
    decoder, decode_device = "decord", "cpu"

    def __init__(self, video_ids, video_paths, queries, preprocess, num_frames, on_error="raise"):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if on_error not in ("raise", "report"):
            raise ValueError(f"on_error must be 'raise' or 'report', got {on_error!r}")
        self.video_ids = list(video_ids)
        self.video_paths = [str(p) for p in video_paths]
        self.queries = queries.reset_index(drop=True)
        self.preprocess = preprocess if preprocess is None or isinstance(
            preprocess, FramePreprocess) else FramePreprocess(preprocess)
        self.num_frames = num_frames
        self.on_error = on_error

    def __len__(self):
        return len(self.video_ids)

    def set_decoder(self, decoder, decode_device="cpu"):
        """Decode with decoder ("decord", "pyav", "torchcodec", "auto") on decode_device."""
        video_decoders.resolve_decoder(decoder)
        self.decoder, self.decode_device = decoder, decode_device

    def text_rows(self):
        """The texts to encode and the query each belongs to: (list of str, list of int). A
        query with several texts (prompts, a paragraph's sentences) is their mean unit
        embedding. Here: one text per query, its caption."""
        return self.queries["caption"].tolist(), list(range(len(self.queries)))

    def __getitem__(self, index):
        item = {"index": index, "video_id": self.video_ids[index], "error": "", "decoded": {}}
        try:
            frames, item["decoded"] = read_video(self.video_paths[index], self.num_frames,
                                                 decoder=self.decoder, device=self.decode_device)
            item["video"] = frames if self.preprocess is None else self.preprocess(frames)
        except VideoDecodeError as e:
            if self.on_error == "raise":
                raise
            item["error"] = str(e)
            item["video"] = self._placeholder()
        return item

    def _placeholder(self):
        if self.preprocess is None:
            return torch.zeros(self.num_frames, 3, 0, 0, dtype=torch.uint8)
        size = self.preprocess.crop
        return torch.zeros(self.num_frames, 3, size, size, dtype=self.preprocess.dtype)


def ignore_interrupts(worker_id):
    """A DataLoader worker's worker_init_fn: Ctrl-C reaches the whole process group, and a
    worker that took it printed a traceback from wherever it was (decord's VideoReader.__del__
    in one run). The main process takes it alone and ends its workers as it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def collate_videos(items):
    """DataLoader collate for VideoDataset items: "index" [B] tensor, "video_id", "error" and
    "decoded" lists, and "video" a list of B tensors (sizes differ when frames are raw)."""
    return {"index": torch.tensor([item["index"] for item in items]),
            "video_id": [item["video_id"] for item in items],
            "error": [item["error"] for item in items],
            "decoded": [item["decoded"] for item in items],
            "video": [item["video"] for item in items]}


class MSRVTTDataset(VideoDataset):
    """MSR-VTT test videos of a split (see load_msrvtt_split), downloaded when missing."""

    def __init__(self, preprocess, num_frames, split="jsfusion", data_root="./data",
                 download=True, url=MSRVTT_URL, on_error="raise", progress=True):
        if download:
            download_msrvtt(data_root, url=url, progress=progress)
        queries = load_msrvtt_split(data_root, split)
        video_ids = list(dict.fromkeys(queries["video_id"]))
        video_dir = Path(data_root) / "MSRVTT" / "videos" / "all"
        super().__init__(video_ids, [video_dir / f"{v}.mp4" for v in video_ids], queries,
                         preprocess, num_frames, on_error)


class CSVDataset(VideoDataset):
    """The user's own videos: a CSV with video_path (relative to video_root) and caption columns,
    one row per caption. Videos keep their first-appearance order; captions are grouped by video.

    A video is its file: rows that name one file under different paths ('a.mp4', './a.mp4', a
    symlink) are one video, under the first path, with a warning, as are repeated rows.
    check_files: report rows whose video file is missing before anything is decoded.
    """

    def __init__(self, csv_path, video_root, preprocess, num_frames, on_error="raise",
                 check_files=True):
        table = _read_caption_csv(csv_path)
        video_root = Path(video_root)
        if check_files:
            _check_files_exist(table, video_root, csv_path)
        table = _merge_same_files(table, video_root, csv_path)
        video_ids = list(dict.fromkeys(table["video_path"]))
        order = {v: i for i, v in enumerate(video_ids)}
        table = table.assign(order=table["video_path"].map(order)).sort_values("order",
                                                                               kind="stable")
        queries = pd.DataFrame({"video_id": table["video_path"].to_numpy(),
                                "caption": table["caption"].to_numpy()})
        super().__init__(video_ids, [video_root / v for v in video_ids], queries, preprocess,
                         num_frames, on_error)


def _merge_same_files(table, video_root, csv_path):
    """video_path rewritten to the first path that names each file (resolved through '.', '..'
    and symlinks), with warnings for other spellings and for repeated (video, caption) rows."""
    first_path = {}
    for path in table["video_path"]:
        first_path.setdefault(os.path.realpath(video_root / path), path)
    canonical = table["video_path"].map(lambda p: first_path[os.path.realpath(video_root / p)])
    renamed = sorted({(p, c) for p, c in zip(table["video_path"], canonical) if p != c})
    if renamed:
        examples = ", ".join(f"{p!r} is {c!r}" for p, c in renamed[:3])
        warnings.warn(f"{csv_path}: {len(renamed)} path(s) name a file already listed under "
                      f"another path ({examples}); each file counts as one video", stacklevel=3)
    table = table.assign(video_path=canonical)
    repeated = int(table.duplicated(["video_path", "caption"]).sum())
    if repeated:
        warnings.warn(f"{csv_path}: {repeated} row(s) repeat a (video, caption) row; each copy "
                      "counts as a query", stacklevel=3)
    return table


def _read_caption_csv(csv_path):
    if os.path.isdir(csv_path):
        raise DatasetError(f"--csv {csv_path} is a folder; pass the CSV file (video_path, "
                           "caption) itself, and the folder of videos with --video_root")
    if not os.path.exists(csv_path):
        raise DatasetError(f"CSV file not found: {csv_path} (set it with --csv)")
    check_caption_fields(csv_path)
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot parse {csv_path}: {e}") from e
    missing_columns = {"video_path", "caption"} - set(table.columns)
    if missing_columns:
        raise DatasetError(f"{csv_path} needs columns video_path and caption, missing "
                           f"{sorted(missing_columns)} (has {list(table.columns)})")
    if len(table) == 0:
        raise DatasetError(f"{csv_path} has no rows")
    empty = table.index[(table["video_path"] == "") | (table["caption"] == "")]
    if len(empty):
        raise DatasetError(f"{csv_path}: empty video_path or caption on line(s) "
                           f"{[int(i) + 2 for i in empty[:10]]}")
    return table


def check_caption_fields(csv_path):
    """Raise DatasetError if a row has more fields than the header: an unquoted comma in a
    caption, which pandas would otherwise read as an index column (every row) or refuse with a
    bare parser message (some rows). Lines are numbered as in an editor."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader if row]  # pandas skips blank lines
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot parse {csv_path}: {e}") from e
    header = rows[0][1] if rows else []
    long_rows = [line for line, row in rows[1:] if len(row) > len(header)]
    if long_rows:
        raise DatasetError(f"{csv_path}: {len(long_rows)} row(s) have more fields than the "
                           f"header's {len(header)}, on line(s) {long_rows[:10]}: captions with "
                           "commas must be quoted, as in video.mp4,\"a dog, running\"")


def _check_files_exist(table, video_root, csv_path):
    """Report rows whose video file is missing, by CSV line number (the header is line 1)."""
    exists = {v: (video_root / v).is_file() for v in table["video_path"].unique()}
    bad_lines = [int(i) + 2 for i, v in zip(table.index, table["video_path"]) if not exists[v]]
    folders = [v for v, found in exists.items() if not found and (video_root / v).is_dir()]
    if folders:
        raise DatasetError(f"{csv_path}: {len(folders)} video_path(s) name a folder, not a video "
                           f"file (first: {video_root / folders[0]}); point them at the videos")
    if bad_lines:
        first = table["video_path"].iloc[bad_lines[0] - 2]
        raise DatasetError(f"{csv_path}: {len(bad_lines)} row(s) point at missing videos, on "
                           f"line(s) {bad_lines[:10]} (first: {video_root / first}); fix "
                           "--video_root or the CSV, or pass --skip_bad_videos")


# ----------------------------------------------------------------------------------------------
# Registry entries (clip_hitchhiker.datasets): MSR-VTT and the CSV datasets


def build_msrvtt(preprocess, num_frames, request):
    """The MSR-VTT entry's build: see clip_hitchhiker.datasets.DatasetEntry."""
    built = MSRVTTDataset(preprocess, num_frames, split=request.split or SPLITS[0],
                          data_root=request.data_root, download=request.download,
                          url=request.urls["msrvtt"], on_error="report",
                          progress=request.download)
    return built, {"dataset": "msrvtt"}  # 1k-A and miech share their videos (the fingerprint)


def build_csv(preprocess, num_frames, request):
    """The CSV entry's build: the user's own videos, paths relative to video_root (default .)."""
    video_root = request.video_root or "."
    built = CSVDataset(request.csv, video_root, preprocess, num_frames,
                       check_files=request.check_files, on_error="report")
    return built, {"dataset": "csv", "video_root": str(Path(video_root).resolve())}


def msrvtt_missing(data_root, video_root=None):
    """What the suite must fetch before it can run MSR-VTT, or None when it is on disk."""
    if (Path(data_root) / "MSRVTT" / COMPLETE_MARKER).is_file():
        return None
    return (f"MSR-VTT is not in {Path(data_root) / 'MSRVTT'}: run `python run_msr_retrieval.py "
            f"--data_root {data_root}` once to download it (about 6 GB)")


def _release_references():
    """The release's 16-frame 1k-A lines (Bain et al.), and Portillo-Quintero et al.'s mean
    pooling with ViT-B/32, as clip_hitchhiker.datasets.Reference rows."""
    release = "Bain et al. 2022 (arXiv 2205.08508), the release's lines"
    shown = ("R1", "R5", "R10", "MedR")
    return (
        Reference("Portillo-Quintero et al. 2021 (arXiv 2102.12443)", "ViT-B/32", "not stated",
                  "mean-pooling", {"R1": 31.2, "R5": 53.7, "R10": 64.2}, split="jsfusion"),
        Reference(release, "ViT-B/16", "16", "mean-pooling",
                  {k: PUBLISHED["mean-pooling"][k] for k in shown}, split="jsfusion"),
        Reference(release, "ViT-B/16", "16", "query-scoring",
                  {k: PUBLISHED["query-scoring, temp: 0.1"][k] for k in shown}, temperature=0.1,
                  split="jsfusion"))


def _register():
    register(DatasetEntry(
        name="msrvtt", title="MSR-VTT", task="retrieval", splits=SPLITS,
        queries="jsfusion (1k-A): the one caption per video the release's .pkl picks; miech "
                "and full-test: every caption", metric="recall", build=build_msrvtt,
        folders=("MSRVTT",), urls=(UrlOption("msrvtt", MSRVTT_URL, "where to download "
                                             "MSRVTT.zip"),),
        missing=msrvtt_missing, references=_release_references(),
        # A few videos have 19 captions, not 20: 2 fewer than 20 a video in the 1k test videos,
        # 6 in the full test (albanie/collaborative-experts, data_loader/MSRVTT_dataset.py,
        # sanity_checks).
        counts={"jsfusion": {"videos": 1000, "queries": 1000},
                "miech": {"videos": 1000, "queries": 19998},
                "full-test": {"videos": 2990, "queries": 59794}}))
    register(DatasetEntry(
        name="csv", title="your own videos (CSV)", task="retrieval", splits=(),
        queries="each CSV row (video_path, caption) is a query", metric="recall",
        build=build_csv, in_suite=False))


_register()
