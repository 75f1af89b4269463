"""The on-disk format of a video search index (`search_videos.py index`), read and written here.

An index folder holds:

    manifest.json                  what is committed: written last, atomically (os.replace)
    videos-<generation>.parquet    one row per video (see TABLE_SCHEMA)
    frames-<generation>-r<rank>.npy   float16 [N, D] frame embeddings, row-major, memory-mappable
    means-<generation>-r<rank>.npy    float32 [n, D] segment means: of each run of 8 frames
    stage1-<generation>.faiss      FAISS index over the segment means (ids: the table's "id"
                                   * 2^16 + the segment's number)
    .lock                          held by the one writer

Files are never changed once written: a commit writes new files under new names, then the
manifest that names them, then removes what no manifest names any more. A reader that reads the
manifest and then opens the files sees one committed state, never a mix. Everything is plain
data (JSON, Parquet, .npy without pickle, a FAISS index): nothing is unpickled.

Checks: every open compares each named file's size with the manifest (a truncated or missing
file is caught at once), reads the table and the FAISS file whole against their sha256, and
checks the crc32 of each video's frames when they are read for scoring; `info --verify` checks
every file's sha256.
"""
import hashlib
import json
import os
import re
import zlib
from pathlib import Path

import numpy as np

from clip_hitchhiker.embedding_cache import write_atomically
from clip_hitchhiker.errors import VideoIndexError

__all__ = ["FORMAT", "VERSION", "MANIFEST", "TABLE_COLUMNS", "check_files", "file_record",
           "frames_crc32", "index_file_pattern", "read_manifest", "read_table", "verify_files",
           "write_manifest", "write_npy", "write_table"]

FORMAT = "clip-hitchhiker-video-index"
VERSION = 1
MANIFEST = "manifest.json"
# The table's columns, in order, and what each holds.
TABLE_COLUMNS = {
    "id": "int64: the video's id in the FAISS index (stable across commits)",
    "path": "string: absolute path of the video file",
    "size": "int64: file size in bytes when indexed",
    "mtime_ns": "int64: modification time (ns) when indexed",
    "sha256": "string: hex digest of the file's content when indexed",
    "duration": "float64: seconds",
    "frame_times": "list<float64>: each frame's presentation time, seconds, ascending",
    "frame_indices": "list<int64>: each frame's number in presentation order",
    "frames_file": "string: the frames-*.npy file holding its frames",
    "offset": "int64: its first row in that file (its frames are rows offset..offset+F-1)",
    "frames_crc32": "int64: zlib.crc32 of its float16 frame rows' bytes",
    "means_file": "string: the means-*.npy file holding its segment means",
    "mean_row": "int64: its first row there (it has ceil(F / 8) rows: the means of frames "
                "0-7, 8-15, ...)",
}
_INDEX_FILE = re.compile(r"(manifest\.json|videos-\d+\.parquet|(frames|means)-\d+-r\d+\.npy|"
                         r"stage1-\d+\.faiss)")
_REPAIR = ("rebuild it: move the folder aside and run search_videos.py index again with the same "
           "options")


def index_file_pattern():
    """The names the indexer writes (and may remove when no manifest names them)."""
    return _INDEX_FILE


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(folder, name, data=None):
    """{"bytes", "sha256"} of folder/name (data: its bytes, when the caller has them)."""
    path = Path(folder) / name
    if data is None:
        return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def frames_crc32(rows):
    """rows: float16 [F, D] (C-contiguous). returns: zlib.crc32 of their bytes."""
    return zlib.crc32(np.ascontiguousarray(rows).view(np.uint8).ravel())


# ----------------------------------------------------------------------------------------------
# Manifest


def write_manifest(folder, manifest, before_replace=None):
    """Write manifest.json atomically, with a checksum of its own content.
    before_replace(tmp_path): called with the complete temporary file (a test hook)."""
    body = dict(manifest, checksum=_manifest_checksum(manifest))

    def write(tmp):
        Path(tmp).write_text(json.dumps(body, indent=1) + "\n")
        if before_replace is not None:
            before_replace(tmp)

    write_atomically(Path(folder) / MANIFEST, write)


def _manifest_checksum(manifest):
    content = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def read_manifest(folder):
    """The committed manifest of folder, checked; None if the folder has none (a new index)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VideoIndexError(f"{path} is unreadable ({type(e).__name__}); {_REPAIR}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise VideoIndexError(f"{path} is not a {FORMAT} manifest; is --index the right folder?")
    if manifest.get("version") != VERSION:
        raise VideoIndexError(f"{path} has format version {manifest.get('version')!r}; this "
                              f"program reads version {VERSION}; {_REPAIR}")
    if manifest.get("checksum") != _manifest_checksum(manifest):
        raise VideoIndexError(f"{path} was altered (its checksum does not match its content); "
                              f"{_REPAIR}")
    return manifest


# ----------------------------------------------------------------------------------------------
# Files


def check_files(folder, manifest):
    """Raise VideoIndexError naming the first file the manifest names that is missing or has
    another size (cheap: one stat per file)."""
    for name, record in manifest["files"].items():
        path = Path(folder) / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise VideoIndexError(f"{path} is missing (named by {MANIFEST}); {_REPAIR}") from None
        if size != record["bytes"]:
            raise VideoIndexError(f"{path} has {size} bytes, {MANIFEST} says {record['bytes']} "
                                  f"(truncated or altered); {_REPAIR}")


def verify_files(folder, manifest):
    """check_files, then every file's sha256. returns: the number of bytes checked."""
    check_files(folder, manifest)
    total = 0
    for name, record in manifest["files"].items():
        if sha256_of(Path(folder) / name) != record["sha256"]:
            raise VideoIndexError(f"{Path(folder) / name} was altered (sha256 differs from "
                                  f"{MANIFEST}); {_REPAIR}")
        total += record["bytes"]
    return total


def checked_bytes(folder, name, manifest):
    """The bytes of a file the manifest names, checked against its sha256."""
    path = Path(folder) / name
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["files"][name]["sha256"]:
        raise VideoIndexError(f"{path} was altered (sha256 differs from {MANIFEST}); {_REPAIR}")
    return data


def write_npy(path, array, between_halves=None):
    """Write array as .npy (no pickle) atomically; between_halves(): a test hook called when
    half the data is written."""
    array = np.ascontiguousarray(array)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, np.lib.format.header_data_from_array_1_0(array))
            data = array.view(np.uint8).ravel()
            half = len(data) // 2
            f.write(data[:half])
            if between_halves is not None:
                f.flush()
                between_halves()
            f.write(data[half:])

    write_atomically(path, write)


def open_npy(folder, name, dtype):
    """A read-only memory map of an index .npy file, its dtype and 2-d shape checked."""
    path = Path(folder) / name
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise VideoIndexError(f"{path} is unreadable ({e}); {_REPAIR}") from e
    if array.dtype != dtype or array.ndim != 2:
        raise VideoIndexError(f"{path} holds {array.dtype} {array.shape}, not 2-d {dtype}; "
                              f"{_REPAIR}")
    return array


# ----------------------------------------------------------------------------------------------
# Table


def write_table(path, columns):
    """Write the videos table (columns: {name: list or array}, TABLE_COLUMNS' names) as Parquet,
    atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"id": pa.int64(), "path": pa.string(), "size": pa.int64(), "mtime_ns": pa.int64(),
             "sha256": pa.string(), "duration": pa.float64(),
             "frame_times": pa.list_(pa.float64()), "frame_indices": pa.list_(pa.int64()),
             "frames_file": pa.string(), "offset": pa.int64(), "frames_crc32": pa.int64(),
             "means_file": pa.string(), "mean_row": pa.int64()}
    table = pa.table({name: pa.array(columns[name], type=types[name]) for name in TABLE_COLUMNS})
    write_atomically(path, lambda tmp: pq.write_table(table, tmp))


def read_table(folder, manifest):
    """The committed videos table as {column: list or numpy array}, checked against its sha256."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = manifest["table"]
    data = checked_bytes(folder, name, manifest)
    table = pq.read_table(pa.BufferReader(data))
    if table.column_names != list(TABLE_COLUMNS):
        raise VideoIndexError(f"{Path(folder) / name} has columns {table.column_names}, "
                              f"expected {list(TABLE_COLUMNS)}; {_REPAIR}")
    columns = {}
    for column in TABLE_COLUMNS:
        values = table.column(column)
        if column in ("frame_times", "frame_indices"):
            columns[column] = [np.asarray(v, dtype=np.float64 if column == "frame_times"
                                          else np.int64) for v in values.to_pylist()]
        elif column in ("path", "sha256", "frames_file", "means_file"):
            columns[column] = values.to_pylist()
        else:
            columns[column] = values.to_numpy()
    return columns


def segment_vectors(folder, table, dim, maps=None):
    """The segment means of every video of table, float32 [N, D], and their int64 ids [N]."""
    from clip_hitchhiker.search.candidate_index import segment_count, vector_ids

    maps = {} if maps is None else maps
    counts = [len(t) for t in table["frame_times"]]
    blocks = []
    for name, row, count in zip(table["means_file"], table["mean_row"], counts):
        if name not in maps:
            maps[name] = open_npy(folder, name, np.float32)
        blocks.append(maps[name][row:row + segment_count(count)])
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
    return vectors, vector_ids(table["id"], counts)


def empty_table():
    return {name: [] for name in TABLE_COLUMNS}


def remove_unnamed_files(folder, manifest):
    """Remove the index files no manifest names (a crashed run's, or superseded ones); only names
    the indexer writes, and only by the writer holding the lock."""
    named = set(manifest["files"]) | {MANIFEST} if manifest else {MANIFEST}
    for entry in os.scandir(folder):
        stale_tmp = entry.name.startswith(".") and _INDEX_FILE.fullmatch(
            entry.name[1:].rsplit(".", 1)[0])
        if (_INDEX_FILE.fullmatch(entry.name) and entry.name not in named) or stale_tmp:
            os.unlink(entry.path)
