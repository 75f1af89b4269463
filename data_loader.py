"""MSR-VTT and custom video datasets: download, splits, frame sampling, decoding, preprocessing.

Everything that touches the network, the disk, decord and pandas lives here.

Layout of the release's zip (https://github.com/m-bain/frozen-in-time), extracted under data_root:
    MSRVTT/annotation/MSR_VTT.json                        COCO-style captions
    MSRVTT/videos/all/<video_id>.mp4
    MSRVTT/high-quality/structured-symlinks/
        val_list_jsfusion.txt, jsfusion_val_caption_idx.pkl   (1k-A)
        test_list_miech.txt, test_list_full.txt               (one video id per line)
"""
import http.client
import json
import os
import pickle
import shutil
import socket
import stat
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision.transforms import Normalize
from tqdm import tqdm

MSRVTT_URL = "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"
SPLITS = ("jsfusion", "miech", "full-test")
# Written inside MSRVTT/ once extraction has finished; a folder without it is redone.
COMPLETE_MARKER = ".extraction_complete"
_SPLIT_LISTS = {"jsfusion": "val_list_jsfusion.txt", "miech": "test_list_miech.txt",
                "full-test": "test_list_full.txt"}
_JSFUSION_CAPTION_INDEX = "jsfusion_val_caption_idx.pkl"
_DOWNLOAD_BLOCK = 1 << 20


class DatasetError(RuntimeError):
    """A dataset that cannot be downloaded, extracted or read; the message says what to do."""


class VideoDecodeError(RuntimeError):
    """A video file that is missing or cannot be decoded; the message names the path."""


# ----------------------------------------------------------------------------------------------
# Download and extraction


def download_msrvtt(data_root="./data", url=MSRVTT_URL, progress=True, retries=3):
    """Download and extract MSR-VTT under data_root unless a complete copy is already there.

    Resumes a partial download (``MSRVTT.zip.part``), checks every entry's CRC, refuses unsafe
    entries, and marks the extracted folder complete only at the end.
    returns: Path of data_root/MSRVTT.
    """
    data_root = Path(data_root)
    dataset_dir = data_root / "MSRVTT"
    if (dataset_dir / COMPLETE_MARKER).is_file():
        return dataset_dir
    data_root.mkdir(parents=True, exist_ok=True)
    zip_path = data_root / "MSRVTT.zip"
    if not zip_path.is_file():
        download_file(url, zip_path, progress=progress, retries=retries)
    extract_zip_safely(zip_path, data_root, top_folder="MSRVTT", progress=progress)
    return dataset_dir


def download_file(url, dest, progress=True, retries=3, timeout=60):
    """Stream url into dest + '.part', resuming with HTTP Range; rename to dest when complete.

    A server that ignores Range (HTTP 200) restarts the file cleanly. After an interruption, up to
    ``retries`` resumes are tried before giving up; the next call resumes where this one stopped.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            expected_size = _download_into(url, part, progress, timeout)
            break
        except _Interrupted as interruption:
            if attempt == retries:
                raise DatasetError(
                    f"download of {url} was interrupted ({interruption}) with "
                    f"{part.stat().st_size} bytes in {part}; run again to resume") from interruption
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DatasetError(f"download of {url} ended with {size} of {expected_size} bytes in "
                           f"{part}; run again to resume")
    os.replace(part, dest)
    return dest


class _Interrupted(Exception):
    pass


def _download_into(url, part, progress, timeout):
    """One HTTP request that appends to (or restarts) part. returns: the full size, if known."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "clip-hitchhiker"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part is not a prefix we can extend: start over
            part.unlink()
            return _download_into(url, part, progress, timeout)
        raise DatasetError(f"download of {url} failed: HTTP {e.code} {e.reason}. Check the URL, "
                           f"or download the file by hand and place it at "
                           f"{part.with_name(part.name[:-len('.part')])}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(f"cannot reach {url}: {getattr(e, 'reason', e)}. Check the network, "
                           f"or download the file by hand and place it at "
                           f"{part.with_name(part.name[:-len('.part')])}") from e
    with response:
        if response.status == 206:
            expected_size = _content_range_total(response, offset, url)
            mode = "ab"
        else:  # 200: the server sent the whole file, whatever we asked
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            expected_size = int(length) if length is not None else None
        with open(part, mode) as out, tqdm(total=expected_size, initial=offset, unit="B",
                                           unit_scale=True, desc=part.name[:-len(".part")],
                                           disable=not progress) as bar:
            try:
                while block := response.read(_DOWNLOAD_BLOCK):
                    out.write(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, OSError) as e:
                raise _Interrupted(repr(e)) from e
    if expected_size is not None and part.stat().st_size < expected_size:
        raise _Interrupted(f"connection closed at {part.stat().st_size} of {expected_size} bytes")
    return expected_size


def _content_range_total(response, offset, url):
    """Total size from 'Content-Range: bytes START-END/TOTAL', checking START is our offset."""
    content_range = response.headers.get("Content-Range", "")
    try:
        unit, spec = content_range.split(" ", 1)
        span, total = spec.split("/")
        start = int(span.split("-")[0])
    except ValueError as e:
        raise DatasetError(f"{url} answered a range request with a bad Content-Range "
                           f"{content_range!r}") from e
    if unit != "bytes" or start != offset:
        raise DatasetError(f"{url} resumed at {content_range!r}, expected byte {offset}; delete "
                           "the .part file and run again")
    return None if total == "*" else int(total)


def extract_zip_safely(zip_path, dest_root, top_folder="MSRVTT", progress=True):
    """Extract zip_path's top_folder into dest_root, all or nothing.

    Every entry is checked before anything is written (no absolute paths, no '..', no symlinks)
    and every file's CRC while it is written, into a staging folder that is moved into place
    only when all is well; then COMPLETE_MARKER is written. A corrupt zip is renamed to
    '<zip>.corrupt' so that it is never taken for a good download.
    """
    zip_path, dest_root = Path(zip_path), Path(dest_root)
    staging = dest_root / f".{top_folder}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            for member in members:
                _check_member(member, zip_path)
            total = sum(m.file_size for m in members)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"extracting {zip_path.name}",
                      disable=not progress) as bar:
                for member in members:
                    _extract_member(archive, member, staging)
                    bar.update(member.file_size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        corrupt = zip_path.with_name(zip_path.name + ".corrupt")
        os.replace(zip_path, corrupt)
        raise DatasetError(f"{zip_path} is corrupt ({e}); it was moved to {corrupt}. Run again to "
                           "download it afresh, or place a good copy at that path") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    extracted = staging / top_folder
    if not extracted.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        raise DatasetError(f"{zip_path} has no {top_folder}/ folder; is it the right file?")
    target = dest_root / top_folder
    shutil.rmtree(target, ignore_errors=True)  # an interrupted earlier extraction
    os.replace(extracted, target)
    shutil.rmtree(staging, ignore_errors=True)
    (target / COMPLETE_MARKER).write_text(f"extracted from {zip_path.name}\n")
    return target


def _check_member(member, zip_path):
    name = member.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(f"{zip_path} has an entry with an absolute path, {name!r}; refusing "
                           "to extract it")
    if ".." in path.parts:
        raise DatasetError(f"{zip_path} has an entry that leaves the target folder, {name!r}; "
                           "refusing to extract it")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise DatasetError(f"{zip_path} has a symbolic link entry, {name!r}; refusing to "
                           "extract it")


def _extract_member(archive, member, staging):
    target = staging.joinpath(*PurePosixPath(member.filename.replace("\\", "/")).parts)
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # ZipExtFile checks the CRC when the entry has been read to its end.
    with archive.open(member) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, _DOWNLOAD_BLOCK)


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


class _RestrictedUnpickler(pickle.Unpickler):
    """Plain containers, numbers, strings and numpy arrays/scalars; nothing else is built."""

    def find_class(self, module, name):
        allowed = _allowed_pickle_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return allowed[(module, name)]


def _allowed_pickle_globals():
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed = {("numpy", "dtype"): np.dtype, ("numpy", "ndarray"): np.ndarray,
               ("collections", "OrderedDict"): __import__("collections").OrderedDict,
               ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
               ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = multiarray.scalar
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
    return allowed


def load_restricted_pickle(path):
    """Unpickle path allowing only data types (see _RestrictedUnpickler); nothing in it runs."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except FileNotFoundError as e:
        raise DatasetError(f"missing {path}; the MSR-VTT folder is incomplete, delete it and "
                           "download again") from e
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise DatasetError(f"{path} is not a plain-data pickle ({e}); refusing to load it") from e


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


def read_video_frames(video_path, num_frames, num_threads=1):
    """Decode the sampled frames with decord. returns: uint8 [num_frames, 3, H, W], RGB."""
    import decord

    video_path = str(video_path)
    if not os.path.isfile(video_path):
        raise VideoDecodeError(f"video file not found: {video_path}")
    try:
        reader = decord.VideoReader(video_path, num_threads=num_threads)
        num_available = len(reader)
        if num_available == 0:
            raise VideoDecodeError(f"video has no frames: {video_path}")
        frames = reader.get_batch(sample_frame_indices(num_available, num_frames)).asnumpy()
    except VideoDecodeError:
        raise
    except Exception as e:  # decord raises its own DECORDError, or RuntimeError
        raise VideoDecodeError(f"cannot decode {video_path}: {e}") from e
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def read_video_decord(video_path, num_frames, num_threads=1):
    """The release's reader: returns float [num_frames, 3, H, W] in [0, 1], RGB."""
    return read_video_frames(video_path, num_frames, num_threads).float() / 255


class FramePreprocess:
    """CLIP's image preprocessing applied to decoded frame tensors.

    Built from the ``preprocess`` that ``clip.load`` returns: its nn.Module transforms (bicubic
    resize of the shorter side, centre crop, CLIP normalisation) are kept as they are, on float
    frames in [0, 1], exactly as the reference release does, so any CLIP resolution is followed.
    dtype: the output dtype; float16 halves what DataLoader workers send when the model is fp16.
    """

    def __init__(self, preprocess, dtype=torch.float32):
        modules = [t for t in getattr(preprocess, "transforms", [])
                   if isinstance(t, torch.nn.Module)]
        if not any(isinstance(m, Normalize) for m in modules):
            raise ValueError("preprocess must be the torchvision Compose that clip.load returns "
                             f"(with a Normalize), got {preprocess!r}")
        self.transforms = torch.nn.Sequential(*modules)
        self.dtype = dtype

    def __call__(self, frames):
        """frames: uint8 [F, 3, H, W]. returns: [F, 3, R, R] in self.dtype."""
        return self.transforms(frames.float() / 255).to(self.dtype)

    def describe(self):
        """A string that changes whenever the output would (for cache keys)."""
        return f"{self.transforms!r} {self.dtype}"


# ----------------------------------------------------------------------------------------------
# Datasets


class VideoDataset(Dataset):
    """One item per video: {"index", "video_id", "video" [F, 3, R, R], "error"}.

    queries: DataFrame with one row per caption (video_id, caption); ``query_to_video`` gives
    each query's video index. With skip_bad_videos, a video that fails to decode gives zeros and
    its error message instead of raising VideoDecodeError.
    """

    def __init__(self, video_ids, video_paths, queries, preprocess, num_frames,
                 skip_bad_videos=False):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.video_ids = list(video_ids)
        self.video_paths = [str(p) for p in video_paths]
        self.queries = queries.reset_index(drop=True)
        position = {v: i for i, v in enumerate(self.video_ids)}
        self.query_to_video = self.queries["video_id"].map(position).to_numpy(dtype=np.int64)
        self.preprocess = preprocess if isinstance(preprocess, FramePreprocess) \
            else FramePreprocess(preprocess)
        self.num_frames = num_frames
        self.skip_bad_videos = skip_bad_videos

    def __len__(self):
        return len(self.video_ids)

    def __getitem__(self, index):
        item = {"index": index, "video_id": self.video_ids[index], "error": ""}
        try:
            item["video"] = self.preprocess(read_video_frames(self.video_paths[index],
                                                              self.num_frames))
        except VideoDecodeError as e:
            if not self.skip_bad_videos:
                raise
            item["error"] = str(e)
            item["video"] = torch.zeros(self.num_frames, 3, *self._resolution(),
                                        dtype=self.preprocess.dtype)
        return item

    def _resolution(self):
        probe = self.preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
        return tuple(probe.shape[-2:])


class MSRVTTDataset(VideoDataset):
    """MSR-VTT test videos of a split (see load_msrvtt_split), downloaded when missing."""

    def __init__(self, preprocess, num_frames, split="jsfusion", data_root="./data",
                 download=True, url=MSRVTT_URL, skip_bad_videos=False, progress=True):
        if download:
            download_msrvtt(data_root, url=url, progress=progress)
        queries = load_msrvtt_split(data_root, split)
        video_ids = list(dict.fromkeys(queries["video_id"]))
        video_dir = Path(data_root) / "MSRVTT" / "videos" / "all"
        super().__init__(video_ids, [video_dir / f"{v}.mp4" for v in video_ids], queries,
                         preprocess, num_frames, skip_bad_videos)


class CSVDataset(VideoDataset):
    """The user's own videos: a CSV with video_path (relative to video_root) and caption columns,
    one row per caption. Videos keep their first-appearance order; captions are grouped by video.
    """

    def __init__(self, csv_path, video_root, preprocess, num_frames, skip_bad_videos=False):
        table = _read_caption_csv(csv_path)
        video_root = Path(video_root)
        if not skip_bad_videos:
            _check_files_exist(table, video_root, csv_path)
        video_ids = list(dict.fromkeys(table["video_path"]))
        order = {v: i for i, v in enumerate(video_ids)}
        table = table.assign(order=table["video_path"].map(order)).sort_values("order",
                                                                               kind="stable")
        queries = pd.DataFrame({"video_id": table["video_path"].to_numpy(),
                                "caption": table["caption"].to_numpy()})
        super().__init__(video_ids, [video_root / v for v in video_ids], queries, preprocess,
                         num_frames, skip_bad_videos)


def _read_caption_csv(csv_path):
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except FileNotFoundError as e:
        raise DatasetError(f"CSV file not found: {csv_path} (set it with --csv)") from e
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


def _check_files_exist(table, video_root, csv_path):
    """Report rows whose video file is missing, by CSV line number (the header is line 1)."""
    exists = {v: (video_root / v).is_file() for v in table["video_path"].unique()}
    bad_lines = [int(i) + 2 for i, v in zip(table.index, table["video_path"]) if not exists[v]]
    if bad_lines:
        first = table["video_path"].iloc[bad_lines[0] - 2]
        raise DatasetError(f"{csv_path}: {len(bad_lines)} row(s) point at missing videos, on "
                           f"line(s) {bad_lines[:10]} (first: {video_root / first}); fix "
                           "--video_root or the CSV, or pass --skip_bad_videos")
