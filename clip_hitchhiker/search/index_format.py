"""The on-disk format of a video search index (`search_videos.py index`), read and written here.

An index folder holds:

    manifest.json                  what is committed: written last, atomically (os.replace)
    videos-<generation>.parquet    one row per video (see TABLE_SCHEMA)
    frames-<generation>-r<rank>.npy   float16 [N, D] frame embeddings, row-major, memory-mappable
    means-<generation>-r<rank>.npy    float32 [n, D] segment means: of each run of 8 frames
    stage1-<generation>.faiss      FAISS index over the segment means (ids: the table's "id"
                                   * 2^32 + the segment's number; 2^16 before version 3)
    codes-<generation>[-r<rank>].npy      uint8 [N, M + 5] the frames' codes (frame_codes.py),
                                   error codes and lengths |v~| (index_codes.py)
    meancodes-<generation>[-r<rank>].npy  uint8 [n, ceil(D / 2)] the segment means' codes
    codebook-<generation>.npy      float32 [M, 256, D / M] the residuals' product quantiser
    meanrange-<generation>.npy     float32 [2, D] the segment means' quantiser (low, step)
    .index-files.json              the journal: which files a writer is creating or removing
                                   (JOURNAL); it also marks the folder as an index
    .lock                          held by the one writer

The codes (version 3; with each coded frame's length since version 4) are a compressed copy of
every frame, held in memory by readers for stage 2; the manifest's "codes" entry says which rows
of which codes file hold the codes of each frames file (and means file). Versions 1 and 2 have
none: readers score their candidates from the frames. A version 3 index's readers compute the
lengths from its codes when they open it. The writer upgrades an older index (`upgrade_pending`,
in index_writer) at its next commit.

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
import threading
import weakref
import zlib
from pathlib import Path

import numpy as np

from clip_hitchhiker.embedding_cache import write_atomically
from clip_hitchhiker.errors import VideoIndexError
from clip_hitchhiker.run_folder import remove_stale_temporaries

try:
    from zlib_ng.zlib_ng import crc32 as _crc32
except ImportError:  # the same values, slower (requirements.txt installs zlib-ng)
    _crc32 = zlib.crc32

__all__ = ["FORMAT", "VERSION", "MANIFEST", "JOURNAL", "TABLE_COLUMNS", "FrameFiles",
           "RaggedColumn", "check_files", "commit_file_names", "file_record", "frames_crc32",
           "index_marker", "manifest_temporary", "read_codes", "read_journal", "read_manifest",
           "read_table", "remove_uncommitted", "verify_files", "write_journal", "write_manifest",
           "write_npy", "write_table"]

FORMAT = "clip-hitchhiker-video-index"
# 2: the table's path_bytes, inode and ctime_ns columns. 3: the codes, and 32-bit segment
# numbers in stage 1's ids (16 before). 4: each coded frame's length in its codes. Older
# versions are read as they are (a version 1 table's inode and ctime_ns unknown) and written as
# the current version by their next commit.
VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
# Below this version an index has no codes and 16-bit segment numbers in stage 1's ids.
CODES_VERSION = 3
# From this version on, the codes hold each coded frame's length (index_codes.NORM_BYTES).
NORMS_VERSION = 4
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
# Read by a reader (read_table(compact=True)) only when first asked for, a group at a time:
# search needs none of them (the page's clips use "sha256", a hit's thumbnail the file's
# fingerprint).
_LAZY_GROUPS = (("frame_indices",), ("sha256", "size", "mtime_ns", "inode", "ctime_ns"))
_LAZY_COLUMNS = tuple(column for group in _LAZY_GROUPS for column in group)
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
    """rows: float16 [F, D] (C-contiguous). returns: zlib.crc32 of their bytes (by zlib-ng's
    crc32, the same value 13 times faster: every frame a search reads is checked)."""
    return _crc32(np.ascontiguousarray(rows).view(np.uint8).ravel())


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


class FrameFiles:
    """Reads the frames of chosen videos from the frames-*.npy files: one pread per video (its
    rows are contiguous), the kernel asked to read them all ahead first, so that a cold page
    cache costs one round of parallel disk reads, not a page fault per 4 kB. No memory maps:
    nothing of the shards stays mapped into the reader."""

    def __init__(self, folder, names, dim):
        self.folder, self.dim = Path(folder), dim
        self._files = {}  # name: (fd, first byte of the data, rows)
        for name in names:
            self._files[name] = self._open(name)

    def _open(self, name):
        path = self.folder / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise VideoIndexError(f"{path} cannot be opened ({e}); {_REPAIR}") from e
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                shape, fortran, dtype, start = _read_npy_header(f)
        except (OSError, ValueError) as e:
            os.close(fd)
            raise VideoIndexError(f"{path} is unreadable ({e}); {_REPAIR}") from e
        if dtype != np.float16 or len(shape) != 2 or shape[1] != self.dim or fortran:
            os.close(fd)
            raise VideoIndexError(f"{path} holds {dtype} {shape}, not float16 [N, {self.dim}]; "
                                  f"{_REPAIR}")
        return fd, start, shape[0]

    def names(self):
        return list(self._files)

    def read(self, spans, advise=True):
        """spans: [(name, first row, rows)]; advise: False where they were prefetched already.
        returns: float16 [sum of rows, D], the spans one after the other."""
        total = sum(count for _, _, count in spans)
        out = np.empty((total, self.dim), dtype=np.float16)
        placed = self.prefetch(spans) if advise else self._placed(spans)
        buffer, position = memoryview(out.view(np.uint8).reshape(-1)), 0
        for fd, offset, size in placed:
            got = os.preadv(fd, [buffer[position:position + size]], offset)
            if got != size:
                raise VideoIndexError(f"a frames file of {self.folder} ended early ({got} of "
                                      f"{size} bytes at {offset}); {_REPAIR}")
            position += size
        return out

    def prefetch(self, spans):
        """Ask the kernel to start reading spans [(name, first row, rows)] into the page cache
        (posix_fadvise WILLNEED: it returns at once, the disk reads them in parallel), each
        checked against its file's rows. returns: [(fd, byte offset, bytes)] of the spans."""
        placed = self._placed(spans)
        if hasattr(os, "posix_fadvise"):
            for fd, offset, size in placed:
                os.posix_fadvise(fd, offset, size, os.POSIX_FADV_WILLNEED)
        return placed

    def _placed(self, spans):
        """[(fd, byte offset, bytes)] of spans [(name, first row, rows)], each checked against
        its file's rows."""
        row_bytes = 2 * self.dim
        placed = []
        for name, first, count in spans:
            fd, start, rows = self._files[name]
            if first < 0 or first + count > rows:
                raise VideoIndexError(f"{self.folder / name} has {rows} rows; the table names "
                                      f"rows {first}..{first + count - 1}; {_REPAIR}")
            placed.append((fd, start + first * row_bytes, count * row_bytes))
        return placed

    def drop_cached(self):
        """Ask the kernel to drop these files' clean pages from the page cache (a cold start,
        for benchmarks: /proc/sys/vm/drop_caches needs root)."""
        for fd, _, _ in self._files.values():
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self):
        for fd, _, _ in self._files.values():
            os.close(fd)
        self._files = {}


def _read_npy_header(f):
    """(shape, fortran order, dtype, first byte of the data) of the .npy file open as f."""
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read(f)
    return shape, fortran, dtype, f.tell()


def read_codes(folder, manifest):
    """The codes of a version 3 or 4 index, read whole into memory and checked against their
    sha256: {"codec": frame_codes.Codec, "error_step": float, "frames": uint8 [N, M + 5] every
    frame's codes (M + 1 in version 3: no lengths), "means": uint8 [n, ceil(D / 2)] every segment
    mean's, "frame_base": {frames file: its first row in "frames"}, "mean_base": {means file: its
    first row in "means"}, "norms_stored": whether the last 4 columns of "frames" hold each coded
    frame's length (version 4)}; None for an index without codes."""
    from clip_hitchhiker.search.frame_codes import Codec

    entry = manifest.get("codes")
    if not entry:
        return None
    codec = Codec.from_arrays(_checked_npy(folder, entry["mean_range"], manifest),
                              _checked_npy(folder, entry["codebook"], manifest))
    frames, frame_base = _stacked_codes(folder, manifest, entry["frames"])
    means, mean_base = _stacked_codes(folder, manifest, entry["means"])
    with_norms = manifest["version"] >= NORMS_VERSION
    width = len(codec.centroids) + 1 + (4 if with_norms else 0)
    if len(frames) and frames.shape[1] != width:
        raise VideoIndexError(f"the codes files of {folder} have {frames.shape[1]} columns, not "
                              f"{width} (format version {manifest['version']}); {_REPAIR}")
    return {"codec": codec, "error_step": float(entry["error_step"]), "frames": frames,
            "means": means, "frame_base": frame_base, "mean_base": mean_base,
            "norms_stored": with_norms}


def _stacked_codes(folder, manifest, placement):
    """placement: {data file: [codes file, first row]}. returns: (uint8 [rows, width], the
    codes files one after the other, read into one array; {data file: its first row there})."""
    files = sorted({codes for codes, _ in placement.values()})
    headers = {name: _npy_header(Path(folder) / name) for name in files}
    widths = {shape[1] for _, shape in headers.values()}
    if len(widths) > 1:
        raise VideoIndexError(f"the codes files of {folder} have widths {sorted(widths)}; "
                              f"{_REPAIR}")
    total = sum(shape[0] for _, shape in headers.values())
    stacked = np.empty((total, widths.pop() if widths else 0), dtype=np.uint8)
    first, row = {}, 0
    for name in files:
        start, shape = headers[name]
        _read_checked_into(Path(folder) / name, start, stacked[row:row + shape[0]], manifest)
        first[name], row = row, row + shape[0]
    return stacked, {data: first[codes] + int(offset) for data, (codes, offset) in
                     placement.items()}


def _npy_header(path):
    """(first byte of the data, shape) of a uint8 2-d .npy file."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype, start = _read_npy_header(f)
    except (OSError, ValueError) as e:
        raise VideoIndexError(f"{path} is unreadable ({e}); {_REPAIR}") from e
    if dtype != np.uint8 or len(shape) != 2 or fortran:
        raise VideoIndexError(f"{path} holds {dtype} {shape}, not 2-d uint8; {_REPAIR}")
    return start, shape


def _read_checked_into(path, start, out, manifest):
    """Read path's data (from byte start) into out, checking the whole file's sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(start))
        view = memoryview(out.reshape(-1))
        if f.readinto(view) != len(view) or f.read(1):
            raise VideoIndexError(f"{path} has another size than its header says; {_REPAIR}")
    digest.update(view)
    if digest.hexdigest() != manifest["files"][path.name]["sha256"]:
        raise VideoIndexError(f"{path} was altered (sha256 differs from {MANIFEST}); {_REPAIR}")


def _checked_npy(folder, name, manifest):
    """A small float32 .npy file the manifest names, checked against its sha256."""
    import io

    data = checked_bytes(folder, name, manifest)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise VideoIndexError(f"{Path(folder) / name} is unreadable ({e}); {_REPAIR}") from e
    if array.dtype != np.float32:
        raise VideoIndexError(f"{Path(folder) / name} holds {array.dtype}, not float32; "
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


class RaggedColumn:
    """A list<...> column held as two arrays, values [total] and offsets [rows + 1], not as one
    numpy array per row (a million rows of those took 500 MB). Indexing a row gives a view."""

    def __init__(self, values, offsets):
        self.values, self.offsets = values, np.asarray(offsets, dtype=np.int64)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, row):
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} of {len(self)}")
        row %= len(self)
        return self.values[self.offsets[row]:self.offsets[row + 1]]

    def __iter__(self):
        return (self[r] for r in range(len(self)))

    def lengths(self):
        """int64 [rows]: each row's number of values."""
        return np.diff(self.offsets)


class StringColumn:
    """A string column kept as Arrow's one buffer (a million paths as Python strings took
    100 MB more); indexing a row gives a str."""

    def __init__(self, array):
        self.array = array

    def __len__(self):
        return len(self.array)

    def __getitem__(self, row):
        return self.array[row].as_py()

    def __iter__(self):
        return iter(self.array.to_pylist())

    def index(self, value):
        """The first row holding value (list.index); ValueError where none does."""
        import pyarrow.compute as pc

        row = pc.index(self.array, value).as_py()
        if row < 0:
            raise ValueError(f"{value!r} is not in the column")
        return row


def read_table(folder, manifest, compact=False):
    """The committed videos table as {column: list, numpy array or RaggedColumn}
    (TABLE_COLUMNS), checked against its sha256; a version 1 table gets inode and ctime_ns -1
    (not recorded). compact: string columns as StringColumn, not lists (readers; "path" too
    when every path is valid UTF-8), and the columns search never uses read from the file only
    when first asked for (_LAZY_COLUMNS: at 1M x 16 the frame indices held 128 MB of a reader's
    2 GB, the file fingerprints 32 MB and their sha256 72 MB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = manifest["table"]
    table_file = _TableFile(folder, manifest) if compact else None
    data = table_file.data() if compact else checked_bytes(folder, name, manifest)
    names = pq.read_schema(pa.BufferReader(data)).names
    version_1 = manifest["version"] == 1 and names == _VERSION_1_COLUMNS
    if names != file_columns() and not version_1:
        raise VideoIndexError(f"{Path(folder) / name} has columns {names}, "
                              f"expected {file_columns()}; {_REPAIR}")
    # The lazy columns are not decoded now (_LazyColumns reads them when asked for).
    table = pq.read_table(pa.BufferReader(data), columns=[
        c for c in names if not (compact and c in _LAZY_COLUMNS)])
    columns = _LazyColumns(table_file) if compact else {}
    for column in TABLE_COLUMNS:
        if not (compact and column in _LAZY_COLUMNS):
            columns[column] = _column_values(table, column, compact)
    raws = None if version_1 else table.column(PATH_BYTES)
    if raws is not None and raws.null_count < len(raws):  # a path that is not UTF-8
        columns["path"] = [os.fsdecode(raw) if raw is not None else text for text, raw in
                           zip(table.column("path").to_pylist(), raws.to_pylist())]
    return columns


def _column_values(table, column, compact):
    """A column of an Arrow table as read_table gives it: a RaggedColumn of the lists, strings
    as a StringColumn (compact) or a list, numbers as numpy; inode and ctime_ns, which a version 1
    table lacks, -1."""
    if column not in table.column_names:
        return np.full(table.num_rows, -1, dtype=np.int64)
    values = table.column(column)
    if column in ("frame_times", "frame_indices"):
        return _ragged_column(values, np.float64 if column == "frame_times" else np.int64)
    if column in ("path", "sha256", "frames_file", "means_file"):
        return StringColumn(values.combine_chunks()) if compact else values.to_pylist()
    return values.to_numpy()


def _ragged_column(values, dtype):
    """An Arrow column of lists as a RaggedColumn of dtype."""
    flat = values.combine_chunks()
    return RaggedColumn(flat.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False),
                        flat.offsets.to_numpy(zero_copy_only=False) - flat.offsets[0].as_py())


class _TableFile:
    """The committed table's file, held open (as the frames files are) so that a reader can read
    its lazy columns after a writer has committed and removed the file's name."""

    def __init__(self, folder, manifest):
        self.path = Path(folder) / manifest["table"]
        self.sha256 = manifest["files"][manifest["table"]]["sha256"]
        self.fd = os.open(self.path, os.O_RDONLY)
        self._close = weakref.finalize(self, os.close, self.fd)

    def data(self):
        """The file's bytes (a bytearray), checked against the manifest's sha256."""
        data = bytearray(os.fstat(self.fd).st_size)
        view, done = memoryview(data), 0
        while done < len(data):
            got = os.preadv(self.fd, [view[done:]], done)
            if got == 0:
                break
            done += got
        if done < len(data) or hashlib.sha256(data).hexdigest() != self.sha256:
            raise VideoIndexError(f"{self.path} was altered (sha256 differs from {MANIFEST}); "
                                  f"{_REPAIR}")
        return data

    def close(self):
        self._close()


def _columns_of(table_file, columns):
    """{column: its values as read_table(compact=True) gives them} of the table file's columns
    (inode and ctime_ns of a version 1 table: -1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = table_file.data()
    names = pq.read_schema(pa.BufferReader(data)).names
    table = pq.read_table(pa.BufferReader(data), columns=[c for c in columns if c in names])
    return {column: _column_values(table, column, compact=True) for column in columns}


class _LazyColumns(dict):
    """A table's columns, those of _LAZY_GROUPS read from its file (held open) when one of their
    group is first asked for. close() closes the file."""

    def __init__(self, table_file):
        super().__init__()
        self._file, self._lock = table_file, threading.Lock()

    def __missing__(self, column):
        group = next((g for g in _LAZY_GROUPS if column in g), None)
        if group is None:
            raise KeyError(column)
        with self._lock:  # two request threads read it once
            if not super().__contains__(column):
                self.update(_columns_of(self._file, group))
        return super().__getitem__(column)

    def __contains__(self, column):  # a lazy column is there, read or not
        return column in _LAZY_COLUMNS or super().__contains__(column)

    def get(self, column, default=None):
        return self[column] if column in self else default

    def loaded(self, column):
        """Whether column is in memory (a lazy one: read already)."""
        return super().__contains__(column)

    def close(self):
        self._file.close()


def segment_vectors(folder, table, dim, maps=None, segment_bits=None):
    """The segment means of every video of table, float32 [N, D], and their int64 ids [N]
    (segment_bits: of the ids, candidate_index.SEGMENT_BITS by default)."""
    from clip_hitchhiker.search.candidate_index import SEGMENT_BITS, segment_count, vector_ids

    maps = {} if maps is None else maps
    counts = [len(t) for t in table["frame_times"]]
    blocks = []
    for name, row, count in zip(table["means_file"], table["mean_row"], counts):
        if name not in maps:
            maps[name] = open_npy(folder, name, np.float32)
        blocks.append(maps[name][row:row + segment_count(count)])
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
    return vectors, vector_ids(table["id"], counts, segment_bits or SEGMENT_BITS)


def empty_table():
    return {name: [] for name in TABLE_COLUMNS}


# ----------------------------------------------------------------------------------------------
# What belongs to the index: the files the manifest and the journal record


def table_name(generation):
    return f"videos-{generation:06d}.parquet"


def stage1_name(generation):
    return f"stage1-{generation:06d}.faiss"


def shard_name(kind, generation, rank):
    """kind: "frames" or "means" (or "codes", "meancodes": codes_name)."""
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
              for rank in range(ranks)),
            *codes_file_names(generation, ranks)]


def codes_name(kind, generation, rank=None):
    """kind: "codes", "meancodes" (rank: of the shard they code; None: one file for all),
    "codebook" or "meanrange"."""
    return f"{kind}-{generation:06d}.npy" if rank is None else shard_name(kind, generation, rank)


def codes_file_names(generation, ranks):
    """The names a commit's codes may take (index_codes): per rank's shards, or one file each
    when every frame is coded again, and the codec's two files."""
    return [*(codes_name(kind, generation, rank) for kind in ("codes", "meancodes")
              for rank in range(ranks)),
            *(codes_name(kind, generation) for kind in ("codes", "meancodes", "codebook",
                                                         "meanrange"))]


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
