"""Which of the user's files an index run looks at: the videos that PATHs name (folders walked
through symbolic links, loops stopped; lists of paths), what was passed over and why, and the
stat fingerprint that decides, without reading a byte, whether a video changed.

Every path is kept as the user gave it, made absolute without resolving links: a video reached
through a link is stored under the link's path, so that removing the link removes it from the
index at the next --prune. Nothing here writes, prints or decides what to encode.
"""
import csv
import os
import stat
from dataclasses import dataclass, field

from clip_hitchhiker.errors import ConfigError

__all__ = ["LIST_EXTENSIONS", "STAT_KEYS", "VIDEO_EXTENSIONS", "VideoListing", "file_state",
           "list_videos", "listing_problem", "prune_scope", "same_state"]

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ts", ".mts", ".3gp", ".ogv")
LIST_EXTENSIONS = (".txt", ".csv", ".lst")
CSV_PATH_COLUMNS = ("path", "video_path", "video")  # a .csv's first row naming one is its header
# What a file's stat must keep for its content to count as unchanged without hashing it: a
# replacement that restores the size and the mtime (touch -r, cp -p) still changes the inode
# or the ctime, which no user call can set.
STAT_KEYS = ("size", "mtime_ns", "inode", "ctime_ns")


@dataclass
class VideoListing:
    """What PATHs name.

    videos: absolute paths of the videos, sorted, unique, as given (links not resolved);
    skipped: [(path, why)] what was passed over: unreadable folders, broken links, a link to a
        folder listed already, list entries that are missing or not regular files;
    folders, files: the folders named, and the files named (on the command line or in lists,
        found or not), absolute: what a prune may look under;
    empty: the PATHs (folders, lists) that name no video; missing: the PATHs that do not exist;
    unseen: the folders and links that a walk passed over (unreadable, broken, a loop): what is
        under them was not seen, so a prune keeps it.
    """
    videos: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    folders: list = field(default_factory=list)
    files: list = field(default_factory=list)
    empty: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unseen: list = field(default_factory=list)


def list_videos(paths):
    """The VideoListing of PATHs: video files, folders (searched recursively for
    VIDEO_EXTENSIONS, any case, following links to folders) and lists (.txt/.lst: one path a
    line; .csv: a "path"/"video_path"/"video" column, else the first; relative paths are
    relative to the list's folder)."""
    listing = VideoListing()
    videos = set()
    for given in paths:
        path = os.path.abspath(os.fspath(given))
        if os.path.isdir(path):
            listing.folders.append(path)
            found = _videos_under(path, listing)
        elif os.path.isfile(path) and path.lower().endswith(LIST_EXTENSIONS):
            found = _paths_in_list(path, listing)
        elif os.path.isfile(path):
            found = [path]
            listing.files.append(path)
        elif os.path.lexists(path) and not os.path.islink(path):
            raise ConfigError(f"PATH {given} is not a video file, a folder or a list (it is "
                              f"{_not_a_file(path)})")
        else:
            listing.missing.append(path)
            continue
        if not found:
            listing.empty.append(path)
        videos.update(found)
    listing.videos = sorted(videos)
    return listing


def listing_problem(listing, prune=False, confirmed=False):
    """The one-line refusal that listing calls for, or None. A PATH that is missing is an error;
    with prune, a missing PATH or one that names no video would drop every video indexed under
    it (an unmounted drive looks so), unless confirmed; no video at all is nothing to index."""
    for path in listing.missing:
        if not prune:
            return f"PATH {path} is neither a file nor a folder"
        if not confirmed:
            return (f"--prune: {path} is missing (a drive not mounted?), and pruning would drop "
                    "every video indexed under it; mount it, or add --confirm_prune to prune "
                    "them")
    for path in listing.empty:
        if prune and not confirmed:
            return (f"--prune: {path} holds no video (a drive not mounted?), and pruning would "
                    "drop every video indexed under it; check it, or add --confirm_prune to "
                    "prune them")
    if not listing.videos and not (prune and confirmed):
        named = ", ".join(listing.empty + listing.missing)
        return (f"{named} hold(s) no video file ({' '.join(VIDEO_EXTENSIONS)}, any case, or "
                "lists of them): nothing to index")
    return None


def prune_scope(listing):
    """(folders, files, unseen) for IndexWriter.plan's prune: it looks under the folders and the
    files named (or listed), and each missing PATH as either, since it may have been a folder or
    a file (only a confirmed prune goes on with a missing PATH: see listing_problem); never at
    or under what the walk could not see (an unreadable folder, a broken link: a drive not
    mounted behind a link)."""
    return (listing.folders + listing.missing, listing.files + listing.missing,
            list(listing.unseen))


def file_state(path):
    """{"size", "mtime_ns", "inode", "ctime_ns"} of path (links followed): OSError if it cannot
    be read (FileNotFoundError when it is gone)."""
    info = os.stat(path)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino,
            "ctime_ns": info.st_ctime_ns}


def same_state(recorded, state):
    """True if a recorded fingerprint's stat keys all equal state's (-1: not recorded)."""
    return all(int(recorded.get(key, -1)) == state[key] for key in STAT_KEYS)


# ----------------------------------------------------------------------------------------------


def _videos_under(root, listing):
    """The videos under root, depth first in name order, every folder reached without a link
    before any link to a folder is followed; a link to a folder met already in this walk (a
    loop, or a second way in) is skipped, so that every video is listed once, and under its own
    folder's path where the walk can reach it so (not under a link that sorts first). What it
    passes over goes to listing.skipped (with why) and listing.unseen."""
    walked, found, stack, links = set(), [], [root], []

    def passed_over(path, why):
        listing.skipped.append((path, why))
        listing.unseen.append(path)

    while stack or links:
        folder = stack.pop() if stack else links.pop(0)
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in walked:
                passed_over(folder, f"links to a folder listed already "
                                    f"({os.path.realpath(folder)})")
                continue
            walked.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as e:
            passed_over(folder, f"cannot read the folder ({e.strerror or e})")
            continue
        subfolders = []
        for entry in entries:
            if entry.is_symlink() and not os.path.exists(entry.path):
                passed_over(entry.path, "a broken link")
            elif entry.is_dir():
                (links if entry.is_symlink() else subfolders).append(entry.path)
            elif entry.name.lower().endswith(VIDEO_EXTENSIONS) and entry.is_file():
                found.append(entry.path)
        stack.extend(reversed(subfolders))
    return found


def _paths_in_list(list_path, listing):
    """The regular files a list names (absolute); every entry goes to listing.files (a prune
    looks at them), those that are no regular file to listing.skipped."""
    try:
        entries = (_csv_entries(list_path) if list_path.lower().endswith(".csv")
                   else _line_entries(list_path))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"the list {list_path} cannot be read ({e})") from e
    folder = os.path.dirname(list_path)
    found = []
    for entry in entries:
        path = os.path.abspath(os.path.join(folder, entry))
        listing.files.append(path)
        problem = _not_a_file(path)
        if problem:
            listing.skipped.append((path, f"{problem} (listed in {list_path})"))
        else:
            found.append(path)
    return found


def _line_entries(list_path):
    """A .txt/.lst list: one path a line, as bytes decode to a path (any byte but newline may be
    in a name: commas are part of it); blank lines and lines starting with # are skipped."""
    with open(list_path, "rb") as f:
        lines = [line.strip() for line in f.read().split(b"\n")]
    return [os.fsdecode(line) for line in lines if line and not line.startswith(b"#")]


def _csv_entries(list_path):
    """A .csv list: its "path", "video_path" or "video" column, else its first column. The
    first row is a header only when it names one of those columns (any case): otherwise it is
    data, so that a headerless list whose first video is gone reports it (and a prune drops
    it), as it does any other row."""
    with open(list_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = [row for row in csv.reader(f) if row and row[0].strip()]
    column = 0
    if rows:
        header = [h.strip().lower() for h in rows[0]]
        named = [i for i, h in enumerate(header) if h in CSV_PATH_COLUMNS]
        if named:
            column, rows = named[0], rows[1:]
    return [row[column].strip() for row in rows if len(row) > column]


def _not_a_file(path):
    """Why path is not a regular file to read ("not found", "a folder", ...), or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken link" if os.path.islink(path) else "not found"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISDIR(mode):
        return "a folder, not a video file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a device, pipe or socket)"
    return None
