"""The on-disk format of a video search index (`search_videos.py index`), read and written here.

An index folder holds:

    manifest.json                  what is committed: written last, atomically (os.replace)
    videos-<generation>.parquet    one row per video (see TABLE_SCHEMA)
    frames-<generation>-r<rank>.npy   float16 [N, D] frame embeddings, row-major, memory-mappable
    means-<generation>-r<rank>.npy    float32 [n, D] segment means: of each run of 8 frames
    stage1-<generation>.faiss      FAISS index over the segment means (ids: the table's "id"
                                   * 2^16 + the segment's number)
    .index-files.json              the journal: which files a writer is creating or removing
                                   (JOURNAL); it also marks the folder as an index
    .lock                          held by the one writer

Files are never changed once written: a commit records in the journal the names it is about to
write, writes them under new names, then the manifest that names them, then removes what it
superseded. The folder may hold the user's own files: the writer creates, replaces or removes
only the files that the manifest or the journal records (so a new file type needs only to be
named in commit_file_names), never a file because of its name alone. A reader that reads the
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
import zlib
from pathlib import Path

import numpy as np

from clip_hitchhiker.embedding_cache import write_atomically
from clip_hitchhiker.errors import VideoIndexError
from clip_hitchhiker.run_folder import remove_stale_temporaries

__all__ = ["FORMAT", "VERSION", "MANIFEST", "JOURNAL", "TABLE_COLUMNS", "check_files",
           "commit_file_names", "file_record", "frames_crc32", "index_marker",
           "manifest_temporary", "read_journal",
           "read_manifest", "read_table", "remove_uncommitted", "verify_files", "write_journal",
           "write_manifest", "write_npy", "write_table"]

FORMAT = "clip-hitchhiker-video-index"
# 2: the table's path_bytes, inode and ctime_ns columns. Version 1 indexes are read (those
# columns unknown) and written as version 2 by their next commit.
VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
JOURNAL = ".index-files.json"
# The table's columns, in order, and what each holds (in memory, "path" is the path as the file
# system gives it to Python, undecodable bytes as surrogate escapes; see path_bytes).
TABLE_COLUMNS = {
    "id": "int64: the video's id in the FAISS index (stable across commits)",
    "path": "string: absolute path of the video file, as given (symbolic links kept)",
    "size": "int64: file size in bytes when indexed",
    "mtime_ns": "int64: modification time (ns) when indexed",
    "inode": "int64: inode number when indexed (-1: not recorded, version 1)",
    "ctime_ns": "int64: inode change time (ns) when indexed (-1: not recorded, version 1)",
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
# In the Parquet file only: the exact bytes of a path that is not valid UTF-8 (null for every
# other path), whose "path" then holds a readable form (invalid bytes as \xNN).
PATH_BYTES = "path_bytes"
_VERSION_1_COLUMNS = [c for c in TABLE_COLUMNS if c not in ("inode", "ctime_ns")]
_REPAIR = ("rebuild it: move the folder aside and run search_videos.py index again with the same "
           "options")


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


def write_manifest(folder, manifest, before_replace=None, temporary=None):
    """Write manifest.json atomically, with a checksum of its own content.
    before_replace(tmp_path): called with the complete temporary file (a test hook); temporary:
    the temporary file's name in folder, as the journal records it (manifest_temporary)."""
    body = dict(manifest, checksum=_manifest_checksum(manifest))

    def write(tmp):
        Path(tmp).write_text(json.dumps(body, indent=1) + "\n")
        if before_replace is not None:
            before_replace(tmp)

    write_atomically(Path(folder) / MANIFEST, write, make_folder=False,
                     temporary=None if temporary is None else Path(folder) / temporary)


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
    if manifest.get("version") not in READABLE_VERSIONS:
        raise VideoIndexError(f"{path} has format version {manifest.get('version')!r}; this "
                              f"program reads versions {READABLE_VERSIONS}; {_REPAIR}")
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

    write_atomically(path, write, replace=False, make_folder=False)


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


def file_columns():
    """The Parquet file's columns, in order: TABLE_COLUMNS with path_bytes after path."""
    names = list(TABLE_COLUMNS)
    return names[:2] + [PATH_BYTES] + names[2:]


def path_text_and_bytes(path):
    """(the Parquet "path": valid UTF-8, and "path_bytes": None, or the exact bytes of a path
    that is not valid UTF-8, whose text then shows its invalid bytes as \\xNN)."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), raw


def write_table(path, columns):
    """Write the videos table (columns: {name: list or array}, TABLE_COLUMNS' names) as a new
    Parquet file, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"id": pa.int64(), "path": pa.string(), PATH_BYTES: pa.binary(), "size": pa.int64(),
             "mtime_ns": pa.int64(), "inode": pa.int64(), "ctime_ns": pa.int64(),
             "sha256": pa.string(), "duration": pa.float64(),
             "frame_times": pa.list_(pa.float64()), "frame_indices": pa.list_(pa.int64()),
             "frames_file": pa.string(), "offset": pa.int64(), "frames_crc32": pa.int64(),
             "means_file": pa.string(), "mean_row": pa.int64()}
    texts, raws = zip(*map(path_text_and_bytes, columns["path"])) if columns["path"] else ((), ())
    values = {**columns, "path": list(texts), PATH_BYTES: list(raws)}
    table = pa.table({name: pa.array(values[name], type=types[name])
                      for name in file_columns()})
    write_atomically(path, lambda tmp: pq.write_table(table, tmp), replace=False,
                     make_folder=False)


def read_table(folder, manifest):
    """The committed videos table as {column: list or numpy array} (TABLE_COLUMNS), checked
    against its sha256; a version 1 table gets inode and ctime_ns -1 (not recorded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = manifest["table"]
    data = checked_bytes(folder, name, manifest)
    table = pq.read_table(pa.BufferReader(data))
    version_1 = manifest["version"] == 1 and table.column_names == _VERSION_1_COLUMNS
    if table.column_names != file_columns() and not version_1:
        raise VideoIndexError(f"{Path(folder) / name} has columns {table.column_names}, "
                              f"expected {file_columns()}; {_REPAIR}")
    columns = {}
    for column in TABLE_COLUMNS:
        if version_1 and column in ("inode", "ctime_ns"):
            columns[column] = np.full(table.num_rows, -1, dtype=np.int64)
            continue
        values = table.column(column)
        if column in ("frame_times", "frame_indices"):
            columns[column] = [np.asarray(v, dtype=np.float64 if column == "frame_times"
                                          else np.int64) for v in values.to_pylist()]
        elif column in ("path", "sha256", "frames_file", "means_file"):
            columns[column] = values.to_pylist()
        else:
            columns[column] = values.to_numpy()
    if not version_1:
        raws = table.column(PATH_BYTES).to_pylist()
        columns["path"] = [os.fsdecode(raw) if raw is not None else text
                           for text, raw in zip(columns["path"], raws)]
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


# ----------------------------------------------------------------------------------------------
# What belongs to the index: the files the manifest and the journal record


def table_name(generation):
    return f"videos-{generation:06d}.parquet"


def stage1_name(generation):
    return f"stage1-{generation:06d}.faiss"


def shard_name(kind, generation, rank):
    """kind: "frames" or "means"."""
    return f"{kind}-{generation:06d}-r{rank}.npy"


def manifest_temporary(generation):
    """The name under which a commit of generation writes its manifest before it replaces
    manifest.json: recorded in the journal, so that a kill's leftover is removed by that record
    (a name pattern, .manifest.json.XXXXXXXX, would also take a user's .manifest.json.20240101)."""
    return f"manifest-{generation:06d}.json.partial"


def commit_file_names(generation, ranks):
    """Every name a commit of generation may write, ranks writing shards: the journal records
    them before the first is written."""
    return [table_name(generation), stage1_name(generation), manifest_temporary(generation),
            *(shard_name(kind, generation, rank) for kind in ("frames", "means")
              for rank in range(ranks))]


def index_marker(folder):
    """The file that marks folder as an index: JOURNAL, or MANIFEST of this format (an index
    written before the journal existed); None when neither does."""
    for name in (JOURNAL, MANIFEST):
        try:
            record = json.loads((Path(folder) / name).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(record, dict) and record.get("format") == FORMAT:
            return name
    return None


def read_journal(folder):
    """The names the journal records as written (or being written) and not yet known to be
    committed or removed; [] when the folder has no journal."""
    path = Path(folder) / JOURNAL
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise VideoIndexError(f"{path} is unreadable ({type(e).__name__}); {_REPAIR}") from e
    if not isinstance(record, dict):
        record = {}
    pending = record.get("pending")
    if record.get("format") != FORMAT or not isinstance(pending, list) or not all(
            isinstance(name, str) and "/" not in name for name in pending):
        raise VideoIndexError(f"{path} is not this index's journal; {_REPAIR}")
    return pending


def write_journal(folder, pending):
    """Record pending (names of files the writer may have created) before they are written."""
    body = json.dumps({"format": FORMAT, "pending": sorted(set(pending))}, indent=1) + "\n"
    write_atomically(Path(folder) / JOURNAL, lambda tmp: Path(tmp).write_text(body),
                     make_folder=False)


def remove_uncommitted(folder, manifest, pending):
    """Remove the files of pending that manifest does not name (the manifest's temporary among
    them), and the temporary files that writing them or the journal left: all of them the
    writer's own. Only by the writer holding the lock."""
    committed = set(manifest["files"]) if manifest else set()
    remove_files(folder, set(pending) - committed)
    remove_stale_temporaries(folder, [*pending, JOURNAL])


def remove_files(folder, names):
    """Remove folder's files of those names (the writer's own; missing ones are no error)."""
    for name in sorted(names):
        try:
            os.unlink(Path(folder) / name)
        except FileNotFoundError:
            pass
