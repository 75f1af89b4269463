"""Writing a video index: which videos are new, changed or gone, and commits that a SIGKILL at
any moment leaves usable (see clip_hitchhiker.search.index_format for the files).

A video is up to date when its size, mtime and content sha256 all equal the recorded ones
(hashing a file costs far less than decoding it, and catches a same-size edit that kept the old
mtime). Each commit writes the new videos' frames and means to new files, the whole table, the
updated stage-1 index, then the manifest; files no manifest names are removed afterwards, and at
the next start, by the one writer that holds the folder's lock.
"""
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_hitchhiker.search import candidate_index
from clip_hitchhiker.search import index_format as fmt
from clip_hitchhiker.embedding_cache import write_atomically
from clip_hitchhiker.errors import ConfigError, VideoIndexError
from clip_hitchhiker.run_folder import FolderLock

__all__ = ["CONFIG_KEYS", "EncodedVideo", "IndexWriter", "VIDEO_EXTENSIONS", "fingerprint",
           "list_videos", "test_pause", "write_videos"]

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ts", ".mts", ".3gp", ".ogv")
LIST_EXTENSIONS = (".txt", ".csv", ".lst")
# What the embeddings depend on: an index refuses additions that differ in any of these. (The
# weights are model_id's, by content: not "model" or "pretrained", the paths they were read from.)
CONFIG_KEYS = ("backend", "model_id", "embed_dim", "preprocess", "sampling", "decoder")
_PAUSE_ENV, _PAUSE_SIGNAL_ENV = "CLIP_HITCHHIKER_INDEX_PAUSE", "CLIP_HITCHHIKER_INDEX_PAUSED"
_pause_counts = {}


def test_pause(point):
    """A test hook: with CLIP_HITCHHIKER_INDEX_PAUSE=<point>[:<n>], the n-th time (default the
    first) the indexer reaches `point` ("video", "shard", "manifest"), it writes the file named
    by CLIP_HITCHHIKER_INDEX_PAUSED and sleeps, for a test to kill -9 it there."""
    wanted = os.environ.get(_PAUSE_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    _pause_counts[point] = _pause_counts.get(point, 0) + 1
    if _pause_counts[point] == int(nth or 1):
        Path(os.environ[_PAUSE_SIGNAL_ENV]).write_text(point)
        time.sleep(3600)


# ----------------------------------------------------------------------------------------------
# Finding videos


def list_videos(paths):
    """Absolute paths of the videos that PATHs name: files, folders (searched recursively for
    VIDEO_EXTENSIONS) and lists (.txt/.csv/.lst, one path per line or a CSV whose first column,
    or "path"/"video_path" column, holds paths relative to the list's folder). Sorted, unique."""
    found = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found.update(p.resolve() for p in path.rglob("*")
                         if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            found.update(_paths_in_list(path))
        elif path.is_file():
            found.add(path.resolve())
        else:
            raise ConfigError(f"PATH {given} is neither a file nor a folder")
    return sorted(str(p) for p in found)


def _paths_in_list(list_path):
    import csv

    with open(list_path, newline="") as f:
        rows = [row for row in csv.reader(f) if row and row[0].strip()]
    column = 0
    if list_path.suffix.lower() == ".csv" and rows:
        header = [h.strip().lower() for h in rows[0]]
        named = [i for i, h in enumerate(header) if h in ("path", "video_path", "video")]
        if named or not (list_path.parent / rows[0][0]).exists():
            column, rows = (named[0] if named else 0), rows[1:]
    return [(list_path.parent / row[column].strip()).resolve() for row in rows]


def fingerprint(path):
    """{"size", "mtime_ns", "sha256"} of a file."""
    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


# ----------------------------------------------------------------------------------------------
# The writer


@dataclass
class EncodedVideo:
    """One encoded video: frames float16 [F, D], times [F] seconds, indices [F]."""
    path: str
    fingerprint: dict
    frames: np.ndarray
    times: list
    indices: list
    duration: float


class IndexWriter:
    """The one writer of an index folder (holds its lock until close())."""

    def __init__(self, folder, config, stage1_request=None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = _take_lock(self.folder)
        try:
            self._open(config, stage1_request)
        except BaseException:
            self.close()
            raise

    def _open(self, config, stage1_request):
        manifest = fmt.read_manifest(self.folder)
        if manifest is not None:
            refuse_other_config(self.folder, manifest["config"], config)
            fmt.check_files(self.folder, manifest)
            self.table = fmt.read_table(self.folder, manifest)
        else:
            self.table = fmt.empty_table()
        fmt.remove_unnamed_files(self.folder, manifest)
        self.manifest, self.config = manifest, config
        self.generation = manifest["generation"] if manifest else 0
        self.next_id = manifest["next_id"] if manifest else 0
        self.skipped = {s["path"]: s for s in manifest["skipped"]} if manifest else {}
        recorded = manifest["stage1"] if manifest else {"requested": "auto", "type": None}
        self.stage1_request = stage1_request or recorded["requested"]
        self.stage1_kind, self.stage1 = recorded["type"], None
        if manifest is not None:
            try:
                data = fmt.checked_bytes(self.folder, recorded["file"], manifest)
                self.stage1 = candidate_index.deserialize(data, recorded["params"])
            except (VideoIndexError, RuntimeError):
                self.stage1 = None  # damaged: rebuilt from the means at the next commit
        self.stage1_params = recorded.get("params", {})

    def close(self):
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------------------------------

    def plan(self, found, prune):
        """found: {path: fingerprint} of the videos this run names. returns: (paths to encode,
        paths to drop: gone from the disk, with prune)."""
        indexed = {p: {"size": int(s), "mtime_ns": int(m), "sha256": h} for p, s, m, h in zip(
            self.table["path"], self.table["size"], self.table["mtime_ns"],
            self.table["sha256"])}
        skipped = {p: {k: s[k] for k in ("size", "mtime_ns", "sha256")}
                   for p, s in self.skipped.items()}
        to_encode = [p for p, fp in found.items()
                     if indexed.get(p) != fp and skipped.get(p) != fp]
        gone = []
        if prune:
            gone = sorted(p for p in set(indexed) | set(skipped) if not os.path.exists(p))
        return to_encode, gone

    def commit(self, written, failed=(), drop=(), before_manifest=None):
        """Commit videos already written by write_videos (its rows, from every rank, for
        generation self.generation + 1), failed ones ([(path, fingerprint, reason)]) and dropped
        paths: rows of the same paths are replaced. Atomic: the manifest comes last."""
        generation = self.generation + 1
        new_rows = {c: [] for c in fmt.TABLE_COLUMNS}
        for rows in written:
            for column in fmt.TABLE_COLUMNS:
                new_rows[column] += rows[column] if column != "id" else []
        new_rows["id"] = list(range(self.next_id, self.next_id + len(new_rows["path"])))
        self.next_id += len(new_rows["path"])
        replaced = set(drop) | set(new_rows["path"]) | {p for p, _, _ in failed}
        keep = [r for r, p in enumerate(self.table["path"]) if p not in replaced]
        removed = [r for r in range(len(self.table["path"])) if self.table["path"][r] in replaced]
        removed_ids = candidate_index.vector_ids(
            [self.table["id"][r] for r in removed],
            [len(self.table["frame_times"][r]) for r in removed])
        new_means, added_ids = fmt.segment_vectors(self.folder, new_rows, self.config["embed_dim"])
        table = {c: [self.table[c][r] for r in keep] + new_rows[c] for c in fmt.TABLE_COLUMNS}
        order = sorted(range(len(table["path"])), key=lambda r: table["path"][r])
        table = {c: [values[r] for r in order] for c, values in table.items()}
        for path in replaced:
            self.skipped.pop(path, None)
        for path, fp, reason in failed:
            self.skipped[path] = {"path": path, **fp, "reason": reason}
        table_name = f"videos-{generation:06d}.parquet"
        fmt.write_table(self.folder / table_name, table)
        added_ids = candidate_index.vector_ids(new_rows["id"],
                                               [len(t) for t in new_rows["frame_times"]])
        stage1_name = self._write_stage1(table, generation, removed_ids, added_ids, new_means)
        files = {n: (self.manifest["files"][n] if self.manifest and n in self.manifest["files"]
                     else fmt.file_record(self.folder, n))
                 for n in sorted(set(table["frames_file"]) | set(table["means_file"]))}
        files[table_name] = fmt.file_record(self.folder, table_name)
        files[stage1_name] = fmt.file_record(self.folder, stage1_name)
        manifest = {"format": fmt.FORMAT, "version": fmt.VERSION, "generation": generation,
                    "config": self.config, "table": table_name,
                    "stage1": {"file": stage1_name, "type": self.stage1_kind,
                               "requested": self.stage1_request, "params": self.stage1_params},
                    "videos": len(table["path"]),
                    "frames": int(sum(len(t) for t in table["frame_times"])),
                    "next_id": self.next_id,
                    "skipped": sorted(self.skipped.values(), key=lambda s: s["path"]),
                    "files": files, "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                  time.gmtime())}
        fmt.write_manifest(self.folder, manifest, before_replace=before_manifest)
        self.manifest, self.table, self.generation = manifest, table, generation
        fmt.remove_unnamed_files(self.folder, manifest)

    def _write_stage1(self, table, generation, removed_ids, added_ids, added_means):
        vectors = sum(candidate_index.segment_count(len(t)) for t in table["frame_times"])
        kind = candidate_index.choose_type(self.stage1_request, vectors)
        rebuild = (self.stage1 is None or kind != self.stage1_kind
                   or candidate_index.outgrown(self.stage1_params, vectors)
                   or not candidate_index.update(self.stage1, kind, removed_ids, added_means,
                                                 added_ids))
        if rebuild:
            means, ids = fmt.segment_vectors(self.folder, table, self.config["embed_dim"])
            self.stage1, self.stage1_params = candidate_index.build(kind, means, ids)
            self.stage1_kind = kind
        name = f"stage1-{generation:06d}.faiss"
        data = candidate_index.serialize(self.stage1)
        write_atomically(self.folder / name, lambda tmp: Path(tmp).write_bytes(data))
        return name


def write_videos(folder, encoded, generation, rank=0, between_halves=None):
    """Write encoded videos' frames and segment means to this rank's files of generation
    (nothing when encoded is empty). returns: their table rows ({column: list}, JSON-able, "id"
    left to the commit)."""
    rows = {c: [] for c in fmt.TABLE_COLUMNS if c != "id"}
    if not encoded:
        return rows
    folder = Path(folder)
    frames_name = f"frames-{generation:06d}-r{rank}.npy"
    means_name = f"means-{generation:06d}-r{rank}.npy"
    segment_means = [candidate_index.segment_means(v.frames) for v in encoded]
    fmt.write_npy(folder / frames_name, np.concatenate([v.frames for v in encoded]),
                  between_halves)
    fmt.write_npy(folder / means_name, np.concatenate(segment_means))
    offset, mean_row = 0, 0
    for video, video_means in zip(encoded, segment_means):
        values = {"path": video.path, **video.fingerprint, "duration": float(video.duration),
                  "frame_times": [float(t) for t in video.times],
                  "frame_indices": [int(x) for x in video.indices],
                  "frames_file": frames_name, "offset": offset,
                  "frames_crc32": int(fmt.frames_crc32(video.frames)),
                  "means_file": means_name, "mean_row": mean_row}
        for column in rows:
            rows[column].append(values[column])
        offset += len(video.frames)
        mean_row += len(video_means)
    return rows


def refuse_other_config(folder, recorded, wanted):
    """VideoIndexError naming the first setting in which this run differs from the index."""
    for key in CONFIG_KEYS:
        if recorded.get(key) != wanted.get(key):
            raise VideoIndexError(
                f"{folder} was built with {key} = {recorded.get(key)!r}, this run has "
                f"{wanted.get(key)!r}; index with the same model, sampling and preprocessing "
                "options, or into another --index folder")


def _take_lock(folder):
    return FolderLock(folder, option="--index").acquire()
