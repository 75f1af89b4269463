"""The search page's clips of moments, kept in a folder (`serve --cache DIR`) and bounded in
size. A clip is KEY.mp4 with its record KEY.json ({"start", "end", "method"}), both moved into
place once complete (the record first, so that a clip is served only with its record).

Once a new clip takes the folder's clips past max_bytes, the least recently used are removed
until they fit: only clips the server made (a KEY.mp4 and its KEY.json, both regular files),
never another file, a link, a temporary file of a clip being made, or a clip being served (open
for a response). Recency is the record's mtime, set on each use, so that it outlives a restart
and is shared by servers over one folder. A single clip larger than max_bytes is still made and
served; it goes when the next one is added.
"""
import contextlib
import io
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

__all__ = ["ClipCache", "DEFAULT_MAX_BYTES", "clip_key", "temporary_file"]

DEFAULT_MAX_BYTES = 2048 * 10**6
KEY = re.compile(r"(?:[0-9a-f]{1,32}|id[0-9]+)_[0-9]+_[0-9]+_(?:browser|mp4)")


def clip_key(sha256, video_id, start, end, for_browser):
    """The name (less its suffix) of a moment's clip: the video's sha256 (its first 32 hex
    digits; "id<video_id>" if the index has none), so that a changed video never meets an old
    clip, and start and end in milliseconds."""
    return (f"{(sha256 or f'id{video_id}')[:32]}_{round(start * 1000)}_{round(end * 1000)}_"
            + ("browser" if for_browser else "mp4"))


class ClipCache:
    """The clips in folder, at most max_bytes of them (clips and records) once a clip is added,
    less those being served. Thread-safe."""

    def __init__(self, folder, max_bytes=DEFAULT_MAX_BYTES):
        self.folder, self.max_bytes = Path(folder), max_bytes
        self._lock = threading.Lock()
        self._serving = Counter()  # key -> responses holding the clip open
        self._last_use_ns = 0

    def paths(self, key):
        """(clip, record) paths of KEY."""
        return self.folder / f"{key}.mp4", self.folder / f"{key}.json"

    def open(self, key):
        """(file, meta) of the clip KEY, open for reading and marked as used now; it is not
        removed until the file is closed. None if the folder does not hold it with its record."""
        clip, record = self.paths(key)
        with self._lock:
            try:
                meta = json.loads(record.read_text())
                file = _ServedClip(clip, lambda: self._release(key))
            except (OSError, ValueError):
                return None
            self._serving[key] += 1
            self._touch(record)
        return file, meta

    def add(self, key, made, meta):
        """Move the complete clip `made` (a file in the folder) into place as KEY with its
        record, then remove the least recently used clips until the clips fit max_bytes.
        returns: open(key)."""
        clip, record = self.paths(key)
        with temporary_file(self.folder, ".json.part") as part:
            Path(part).write_text(json.dumps(meta))
            os.replace(part, record)
        os.replace(made, clip)
        opened = self.open(key)  # being served from now on: kept
        self._evict()
        return opened

    def _evict(self):
        with self._lock:
            clips = sorted(self._clips())  # least recently used first
            total = sum(size for _, _, size in clips)
            for _, key, size in clips:
                if total <= self.max_bytes:
                    break
                if self._serving[key]:
                    continue
                for path in self.paths(key):  # the clip first: no clip is left without record
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                total -= size

    def _clips(self):
        """[(last use in ns, key, bytes)] of the clips in the folder: KEY.mp4 and KEY.json
        both regular files (not links)."""
        found = []
        with os.scandir(self.folder) as entries:
            names = [entry.name for entry in entries]
        for name in names:
            key = name[:-len(".mp4")]
            if not (name.endswith(".mp4") and KEY.fullmatch(key)):
                continue
            clip, record = self.paths(key)
            try:
                clip_stat, record_stat = os.lstat(clip), os.lstat(record)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(clip_stat.st_mode) and stat.S_ISREG(record_stat.st_mode):
                found.append((record_stat.st_mtime_ns, key,
                              clip_stat.st_size + record_stat.st_size))
        return found

    def _touch(self, record):
        """Set the record's mtime to now (strictly later than the last use: the order of uses
        is kept even where the clock does not move between two)."""
        self._last_use_ns = max(time.time_ns(), self._last_use_ns + 1)
        with contextlib.suppress(OSError):  # a cache the server cannot write still serves
            os.utime(record, ns=(self._last_use_ns, self._last_use_ns))

    def _release(self, key):
        with self._lock:
            self._serving[key] -= 1
            if not self._serving[key]:
                del self._serving[key]


class _ServedClip(io.FileIO):
    """A clip open for a response: closing it (once) tells the cache it may be removed."""

    def __init__(self, path, release):
        super().__init__(path, "r")
        self._release = release

    def close(self):
        if self.closed:
            return
        try:
            super().close()
        finally:
            self._release()


@contextlib.contextmanager
def temporary_file(folder, suffix):
    """The path of a new empty file in folder, removed on the way out unless moved away."""
    fd, temporary = tempfile.mkstemp(suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield temporary
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
