"""Writing a video index: which videos are new, changed, moved or gone, and commits that a
SIGKILL at any moment leaves usable (see clip_hitchhiker.search.index_format for the files).

A video is up to date when its size, mtime, inode and ctime equal the recorded ones; only a
file that differs in one of them is read, and its content sha256 decides: the same content
again (a touch) only updates the record, content that the index holds under a path that no
longer has it (a moved or renamed video) moves that entry, and other content is encoded. Each
commit records the names of the files it will write in the folder's journal, writes the new
videos' frames and means, the whole table, the updated stage-1 index, then the manifest, and
removes what it superseded; a killed commit's files are removed by the next writer, from the
journal. The writer touches no other file of the folder, and refuses a folder that holds files
and is not an index.
"""
import errno
import os
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_hitchhiker.search import candidate_index, index_codes
from clip_hitchhiker.search import index_format as fmt
from clip_hitchhiker.search.video_listing import STAT_KEYS, file_state, same_state
from clip_hitchhiker.embedding_cache import write_atomically
from clip_hitchhiker.errors import VideoIndexError
from clip_hitchhiker.run_folder import FolderLock

__all__ = ["CONFIG_KEYS", "EncodedVideo", "IndexWriter", "fingerprint", "index_folder_problem",
           "test_pause", "write_videos"]

# What the embeddings depend on: an index refuses additions that differ in any of these. (The
# weights are model_id's, by content: not "model" or "pretrained", the paths they were read from.)
CONFIG_KEYS = ("backend", "model_id", "embed_dim", "preprocess", "sampling", "decoder")
_PAUSE_ENV, _PAUSE_SIGNAL_ENV = "CLIP_HITCHHIKER_INDEX_PAUSE", "CLIP_HITCHHIKER_INDEX_PAUSED"
_pause_counts = {}


def test_pause(point):
    """A test hook: with CLIP_HITCHHIKER_INDEX_PAUSE=<point>[:<n>], the n-th time (default the
    first) the indexer reaches `point` ("video", "shard", "codes", "manifest", "cleanup"), it
    writes the file named by CLIP_HITCHHIKER_INDEX_PAUSED and sleeps, for a test to kill -9 it
    there."""
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


def fingerprint(path):
    """{"size", "mtime_ns", "inode", "ctime_ns", "sha256"} of a file."""
    state = file_state(path)
    return {**state, "sha256": fmt.sha256_of(path)}


# ----------------------------------------------------------------------------------------------
# The folder


def index_folder_problem(folder):
    """Why folder cannot receive an index (one line naming it), or None: it is a file; it holds
    files and is not an index (the writer would mix its files with the user's); or no file can
    be created in it. Nothing is created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return (f"--index {folder} is a file, not a folder; give the index's folder (a new or "
                "empty one for a new index)")
    probe = folder
    if folder.is_dir():
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            return f"--index {folder} cannot be read ({e.strerror or e})"
        if names and fmt.index_marker(folder) is None:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            return (f"--index {folder} holds other files ({shown}) and is not a search index; "
                    "give a new or empty folder, or the folder of an index")
    else:
        while not probe.exists():
            probe = probe.parent
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        return (f"--index {folder} cannot be written ({e.strerror or e}): adding videos writes "
                "there; make it writable or choose another folder (search and info only read "
                "an index)")
    return None


@contextmanager
def _writing(folder):
    """An OSError while writing the index becomes one line that names the folder and the cause
    (not the temporary file that met it)."""
    try:
        yield
    except OSError as e:
        cause = ("no space left on device" if e.errno == errno.ENOSPC else
                 e.strerror or str(e))
        name = f" {e.filename}" if isinstance(e, FileExistsError) else ""
        raise VideoIndexError(f"cannot write the index in {folder}{name}: {cause}; the index "
                              "keeps its last commit: free space or fix the folder, then run "
                              "the same command again") from e


def _folder_identity(folder):
    info = os.stat(folder)
    return info.st_dev, info.st_ino


# ----------------------------------------------------------------------------------------------
# The writer


@dataclass
class EncodedVideo:
    """One encoded video: frames float16 [F, D], times [F] seconds, indices [F]; fingerprint:
    fingerprint(path) when it was read."""
    path: str
    fingerprint: dict
    frames: np.ndarray
    times: list
    indices: list
    duration: float


class IndexWriter:
    """The one writer of an index folder (holds its lock until close()). A commit writes the
    files of the generation that reserve() numbered:

        writer.commit([write_videos(folder, encoded, writer.reserve())])
    """

    def __init__(self, folder, config, stage1_request=None):
        self.folder = Path(folder)
        self._lock, self.pending, self._reserved = None, set(), None
        problem = index_folder_problem(self.folder)
        if problem:
            raise VideoIndexError(problem)
        with _writing(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            if fmt.index_marker(self.folder) is None:
                fmt.write_journal(self.folder, [])  # marks the folder as an index
            self._lock = _take_lock(self.folder)
        try:
            self._identity = _folder_identity(self.folder)
            self._open(config, stage1_request)
        except BaseException:
            self.close()
            raise

    def _open(self, config, stage1_request):
        manifest = fmt.read_manifest(self.folder)
        pending = fmt.read_journal(self.folder)
        if manifest is not None:
            refuse_other_config(self.folder, manifest["config"], config)
            fmt.check_files(self.folder, manifest)
            self.table = fmt.read_table(self.folder, manifest)
        else:
            self.table = fmt.empty_table()
        with _writing(self.folder):  # what a killed writer left
            fmt.remove_uncommitted(self.folder, manifest, pending)
            fmt.write_journal(self.folder, [])
        self.manifest, self.config = manifest, config
        self.generation = manifest["generation"] if manifest else 0
        self.next_id = manifest["next_id"] if manifest else 0
        self.skipped = {s["path"]: s for s in manifest["skipped"]} if manifest else {}
        recorded = manifest["stage1"] if manifest else {"requested": "auto", "type": None}
        self.stage1_request = stage1_request or recorded["requested"]
        self.stage1_kind, self.stage1 = recorded["type"], None
        self._open_v2_parts(manifest)
        if manifest is not None:
            try:
                data = fmt.checked_bytes(self.folder, recorded["file"], manifest)
                self.stage1 = candidate_index.deserialize(data, recorded["params"])
            except (VideoIndexError, RuntimeError):
                self.stage1 = None  # damaged: rebuilt from the means at the next commit
        self.stage1_params = recorded.get("params", {})

    def _open_v2_parts(self, manifest):
        """What format version 3 added: the codes, and 32-bit segment ids in stage 1 (a
        version 1 or 2 index has neither; the next commit upgrades it: upgrade_pending)."""
        old = manifest is not None and manifest["version"] < fmt.CODES_VERSION
        self.codes = None if manifest is None or old else manifest["codes"]
        # Indexes before version 3 numbered segments with 16 bits, and recorded none.
        self.segment_bits = (manifest["stage1"]["params"].get("segment_bits", 16) if manifest
                             else candidate_index.SEGMENT_BITS)

    @property
    def upgrade_pending(self):
        """Whether the index is of an older format version: the next commit (even with nothing
        new) rewrites what differs, crash-safely like any commit."""
        return self.manifest is not None and self.manifest["version"] < fmt.VERSION

    def close(self):
        """Remove the files reserved and not committed (an interrupted commit's), then unlock."""
        if self._lock is None:
            return
        try:
            if self.pending and _folder_identity(self.folder) == self._identity:
                fmt.remove_uncommitted(self.folder, self.manifest, self.pending)
                fmt.write_journal(self.folder, [])
        except OSError:
            pass  # the next writer removes them, from the journal
        self._lock.release()
        self._lock = None

    def _check_not_moved(self):
        try:
            moved = _folder_identity(self.folder) != self._identity
        except FileNotFoundError:
            moved = True
        if moved:
            raise VideoIndexError(
                f"--index {self.folder} was moved or removed while this run wrote it; nothing "
                "more is written: the index keeps its last commit, wherever it is now; run the "
                "command again with --index at its new place")

    # ------------------------------------------------------------------------------------------

    def plan(self, videos, prune_under=None, confirm_prune=False, read_sha256=fmt.sha256_of):
        """What to do with the videos a run lists (see the module's docstring). Only files whose
        stat differs from the record are read (read_sha256(path)).

        prune_under: None, or (folders, files[, unseen]): the recorded videos gone from the
        disk (not found: one that cannot be looked at, under a folder without permission, is
        not gone) that lie under one of the folders, or are one of the files, and not at or
        under one of the unseen paths (what the listing's walk passed over), are dropped; a
        prune that would drop more than half the index's videos is refused unless
        confirm_prune.
        returns: a JSON-able dict: "to_encode" [paths], "found" {path: fingerprint} of those,
        "renamed" {recorded path: [path, fingerprint]} (moved, or the same content again),
        "drop" [recorded paths], "failed" [[path, fingerprint, reason]] (unreadable, to record
        as skipped), "kept" [[path, reason]] (indexed videos that cannot be read now: their
        entries stay, since an unreadable file's content may well be the one indexed),
        "vanished" [paths], "up_to_date", "moved", "pruned" (counts).
        """
        recorded, indexed = self._recorded(), set(self.table["path"])
        listed, changed = set(videos), {}
        result = {"to_encode": [], "found": {}, "renamed": {}, "drop": [], "failed": [],
                  "kept": [], "vanished": [], "up_to_date": 0, "moved": 0, "pruned": 0}
        for path in videos:
            found = _fingerprint_or_failure(path, recorded.get(path), read_sha256)
            if found is None:
                result["up_to_date"] += 1
            elif "vanished" in found:
                result["vanished"].append(path)
            elif "failure" in found and path in indexed:
                result["kept"].append([path, found["failure"]])
            elif "failure" in found:
                result["failed"].append([path, found["fingerprint"], found["failure"]])
            elif recorded.get(path, {}).get("sha256") == found["sha256"]:
                result["renamed"][path] = [path, found]  # the same content (a touch)
                result["up_to_date"] += 1
            else:
                changed[path] = found
        self._claim_moved_content(changed, listed, recorded, result)
        if prune_under is not None:
            self._prune(prune_under, confirm_prune, recorded, result)
        return result

    def _recorded(self):
        """{path: fingerprint} of every video the index records, indexed or skipped."""
        keys = ("size", "mtime_ns", "inode", "ctime_ns", "sha256")
        recorded = {p: {k: s.get(k, -1) for k in keys} for p, s in self.skipped.items()}
        for r, path in enumerate(self.table["path"]):
            recorded[path] = {k: (self.table[k][r] if k == "sha256" else int(self.table[k][r]))
                              for k in keys}
        return recorded

    def _claim_moved_content(self, changed, listed, recorded, result):
        """A new or changed file whose content the index records under a path that no longer
        holds it (gone, changed, or the file that the link now given resolves to) takes that
        record over; the others are encoded. A recorded path whose content went elsewhere
        and that now holds other content is dropped unless its own record moved on."""
        by_content = defaultdict(list)
        for path, record in sorted(recorded.items()):
            by_content[record["sha256"]].append(path)
        claimed = set()
        for path, found in sorted(changed.items()):
            source = next((old for old in by_content.get(found["sha256"], [])
                           if old not in claimed and old != path
                           and _released(old, path, changed, listed)), None)
            if source is None:
                result["to_encode"].append(path)
                result["found"][path] = found
                continue
            claimed.add(source)
            result["renamed"][source] = [path, found]
            result["moved"] += 1
        result["drop"] += sorted(path for path in changed if path in recorded
                                 and path not in claimed and path not in result["found"])

    def _prune(self, prune_under, confirm_prune, recorded, result):
        folders, files = prune_under[0], set(prune_under[1])
        unseen = set(prune_under[2]) if len(prune_under) > 2 else set()
        inside = tuple(os.path.join(folder, "") for folder in folders)
        hidden = tuple(os.path.join(path, "") for path in unseen)
        taken = set(result["renamed"]) | set(result["drop"])
        gone = sorted(path for path in recorded if path not in taken
                      and (path in files or path.startswith(inside))
                      and not (path in unseen or path.startswith(hidden)) and _gone(path))
        videos = len(self.table["path"])
        gone_videos = len(set(gone) & set(self.table["path"]))
        if prune_refused(gone_videos, videos) and not confirm_prune:
            raise VideoIndexError(
                f"--prune would remove {gone_videos} of the {videos} videos of {self.folder} "
                f"(their files are gone, e.g. {gone[0]}); if a drive is not mounted, mount it; "
                "to prune them all the same, add --confirm_prune")
        result["drop"] += gone
        result["pruned"] = len(gone)

    def reserve(self, ranks=1):
        """Number the next commit, recording the names of the files it may write (ranks: how
        many ranks write shards) in the journal first. A file of such a name that the index did
        not write is refused, never replaced. returns: the generation."""
        generation = self.generation + 1
        names = fmt.commit_file_names(generation, ranks)
        self._check_not_moved()
        for name in names:
            if name not in self.pending and os.path.lexists(self.folder / name):
                raise VideoIndexError(
                    f"{self.folder / name} is in the way: the index did not write it (a file of "
                    "yours, or one that a killed run of an older version left); move it out of "
                    f"{self.folder} and run again")
        with _writing(self.folder):
            fmt.write_journal(self.folder, self.pending | set(names))
        self.pending |= set(names)
        self._reserved = generation
        return generation

    def commit(self, written, failed=(), drop=(), renamed=None, before_manifest=None):
        """Commit videos already written by write_videos (its rows, from every rank, for the
        generation reserve() numbered), failed ones ([(path, fingerprint, reason)]), dropped
        paths, and renamed records ({recorded path: (path, fingerprint)}: the record moves to
        path, its frames kept); rows of the same paths are replaced. Atomic: the manifest comes
        last."""
        if self._reserved != self.generation + 1:
            self.reserve()
        with _writing(self.folder):
            self._commit(written, failed, drop, renamed or {}, before_manifest)

    def _commit(self, written, failed, drop, renamed, before_manifest):
        generation = self.generation + 1
        new_rows = {c: [] for c in fmt.TABLE_COLUMNS}
        for rows in written:
            for column in fmt.TABLE_COLUMNS:
                new_rows[column] += rows[column] if column != "id" else []
        new_rows["id"] = list(range(self.next_id, self.next_id + len(new_rows["path"])))
        self.next_id += len(new_rows["path"])
        replaced = (set(drop) | set(new_rows["path"]) | {p for p, _, _ in failed}) - set(renamed)
        keep = [r for r, p in enumerate(self.table["path"]) if p not in replaced]
        removed = [r for r, p in enumerate(self.table["path"]) if p in replaced]
        # An older index's 16-bit ids are not updated but rebuilt (_write_stage1): they may not
        # even be computable (a video of more than 2^19 frames overflowed them).
        removed_ids = candidate_index.vector_ids(
            [self.table["id"][r] for r in removed],
            [len(self.table["frame_times"][r]) for r in removed]) \
            if self.segment_bits == candidate_index.SEGMENT_BITS else np.zeros(0, np.int64)
        new_means, _ = fmt.segment_vectors(self.folder, new_rows, self.config["embed_dim"])
        kept = {c: [self.table[c][r] for r in keep] for c in fmt.TABLE_COLUMNS}
        _rename_rows(kept, renamed)
        table = {c: kept[c] + new_rows[c] for c in fmt.TABLE_COLUMNS}
        order = sorted(range(len(table["path"])), key=lambda r: table["path"][r])
        table = {c: [values[r] for r in order] for c, values in table.items()}
        self._update_skipped(replaced, renamed, failed)
        table_name = fmt.table_name(generation)
        fmt.write_table(self.folder / table_name, table)
        added_ids = candidate_index.vector_ids(new_rows["id"],
                                               [len(t) for t in new_rows["frame_times"]])
        code_files = self._write_codes(table, new_rows, generation)
        test_pause("codes")
        stage1_name = self._write_stage1(table, generation, removed_ids, added_ids, new_means)
        files = {n: (self.manifest["files"][n] if self.manifest and n in self.manifest["files"]
                     else fmt.file_record(self.folder, n))
                 for n in sorted(set(table["frames_file"]) | set(table["means_file"])
                                 | set(code_files))}
        files[table_name] = fmt.file_record(self.folder, table_name)
        files[stage1_name] = fmt.file_record(self.folder, stage1_name)
        manifest = {"format": fmt.FORMAT, "version": fmt.VERSION, "generation": generation,
                    "config": self.config, "table": table_name,
                    "stage1": {"file": stage1_name, "type": self.stage1_kind,
                               "requested": self.stage1_request,
                               "params": {**self.stage1_params,
                                          "segment_bits": self.segment_bits}},
                    "codes": self.codes,
                    "videos": len(table["path"]),
                    "frames": int(sum(len(t) for t in table["frame_times"])),
                    "next_id": self.next_id,
                    "skipped": sorted(self.skipped.values(), key=lambda s: s["path"]),
                    "files": files, "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                  time.gmtime())}
        # The files this commit supersedes are recorded before the manifest stops naming them.
        superseded = set(self.manifest["files"]) - set(files) if self.manifest else set()
        self._check_not_moved()
        fmt.write_journal(self.folder, self.pending | superseded)
        self.pending |= superseded
        fmt.write_manifest(self.folder, manifest, before_replace=before_manifest,
                           temporary=fmt.manifest_temporary(generation))
        self.manifest, self.table, self.generation = manifest, table, generation
        test_pause("cleanup")
        fmt.remove_files(self.folder, self.pending - set(files))
        fmt.write_journal(self.folder, [])
        self.pending = set()

    def _update_skipped(self, replaced, renamed, failed):
        moving = {old: self.skipped.pop(old) for old in renamed if old in self.skipped}
        for path in replaced:
            self.skipped.pop(path, None)
        for old, record in moving.items():
            path, found = renamed[old]
            self.skipped[path] = {**record, "path": path, **found}
        for path, found, reason in failed:
            self.skipped[path] = {"path": path, **found, "reason": reason}

    def _write_codes(self, table, new_rows, generation):
        """The codes of this commit's new frames files (or of all, with a codec trained again):
        index_codes. returns: the codes files the manifest names."""
        new_files = sorted(set(zip(new_rows["frames_file"], new_rows["means_file"])))
        self.codes, names = index_codes.commit_codes(
            self.folder, table, None if self.upgrade_pending else self.codes, new_files,
            generation)
        return names

    def _write_stage1(self, table, generation, removed_ids, added_ids, added_means):
        vectors = sum(candidate_index.segment_count(len(t)) for t in table["frame_times"])
        kind = candidate_index.choose_type(self.stage1_request, vectors)
        rebuild = (self.stage1 is None or kind != self.stage1_kind
                   or self.segment_bits != candidate_index.SEGMENT_BITS
                   or candidate_index.outgrown(self.stage1_params, vectors)
                   or not candidate_index.update(self.stage1, kind, removed_ids, added_means,
                                                 added_ids))
        if rebuild:
            means, ids = fmt.segment_vectors(self.folder, table, self.config["embed_dim"])
            self.stage1, self.stage1_params = candidate_index.build(kind, means, ids)
            self.stage1_kind, self.segment_bits = kind, candidate_index.SEGMENT_BITS
        name = fmt.stage1_name(generation)
        data = candidate_index.serialize(self.stage1)
        write_atomically(self.folder / name, lambda tmp: Path(tmp).write_bytes(data),
                         replace=False, make_folder=False)
        return name


def _fingerprint_or_failure(path, recorded, read_sha256):
    """None if path's stat equals its record's; else its fingerprint, or {"vanished": True} if
    it is gone, or {"failure": reason, "fingerprint": what is known} if it cannot be read."""
    try:
        state = file_state(path)
    except FileNotFoundError:
        return {"vanished": True}
    except OSError as e:
        return {"failure": f"cannot read {path} ({e.strerror or e})",
                "fingerprint": {**{key: -1 for key in STAT_KEYS}, "sha256": None}}
    if recorded is not None and same_state(recorded, state):
        return None
    try:
        return {**state, "sha256": read_sha256(path)}
    except FileNotFoundError:
        return {"vanished": True}
    except OSError as e:
        return {"failure": f"cannot read {path} ({e.strerror or e})",
                "fingerprint": {**state, "sha256": None}}


def _gone(path):
    """True when path is known not to exist; False when it exists or cannot be looked at (a
    folder on its way without permission: EACCES is no proof that the video is gone)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def prune_refused(gone_videos, indexed_videos):
    """True when a prune would remove most of an index: more than half of its videos."""
    return 2 * gone_videos > indexed_videos


def _released(old, new, changed, listed):
    """True if recorded path `old` no longer holds its recorded content, so that `new`, which
    holds that content now, may take its record: old changed, is gone, or is, unlisted, another
    name of the same file through symbolic links (the resolved path that older versions stored,
    or a link's path that the file was indexed through before its folder was named)."""
    if old in changed:
        return True
    if old in listed:
        return False
    return not os.path.exists(old) or os.path.realpath(new) == os.path.realpath(old)


def _rename_rows(table, renamed):
    """Give the rows of renamed's recorded paths their new path and fingerprint, in place."""
    for r, path in enumerate(list(table["path"])):  # each path once: the table's are unique
        if path in renamed:
            table["path"][r], found = renamed[path]
            for key in ("size", "mtime_ns", "inode", "ctime_ns", "sha256"):
                table[key][r] = found[key]


def write_videos(folder, encoded, generation, rank=0, between_halves=None):
    """Write encoded videos' frames and segment means to this rank's files of generation (new
    files, whose names IndexWriter.reserve recorded; nothing when encoded is empty).
    returns: their table rows ({column: list}, JSON-able, "id" left to the commit)."""
    rows = {c: [] for c in fmt.TABLE_COLUMNS if c != "id"}
    if not encoded:
        return rows
    folder = Path(folder)
    frames_name = fmt.shard_name("frames", generation, rank)
    means_name = fmt.shard_name("means", generation, rank)
    segment_means = [candidate_index.segment_means(v.frames) for v in encoded]
    with _writing(folder):
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
