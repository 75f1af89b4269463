"""What the datasets read from disk, read one way: annotation files (JSON, lists of ids), with
one message for a file that is missing or not what it should be; and the videos the user brings
(no public host, or a registration): each one's file in a folder under the names the
benchmark's releases use, and the one rule for those missing (the run stops naming them, or
with --skip_bad_videos leaves them out and is marked partial)."""
import json
import os
from pathlib import Path

from clip_hitchhiker.errors import DatasetError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


def read_text(path, missing_hint, kind):
    """The UTF-8 text of the file at path. DatasetError "missing PATH; <missing_hint>" when it
    is not there; naming it, and kind (what it should be, e.g. "a JSON file"), when it cannot be
    read (a folder, no permission) or is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DatasetError(f"missing {path}; {missing_hint}") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not {kind} ({e})") from e
    except OSError as e:
        raise DatasetError(f"cannot read {path} ({e.strerror or e}); it should be {kind} that "
                           "this user can read") from e


def read_json(path, missing_hint):
    """The parsed JSON file at path (DatasetError as read_text, or naming it when it is not
    JSON)."""
    try:
        return json.loads(read_text(path, missing_hint, "a JSON file"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not JSON ({e})") from e


def read_id_list(path, missing_hint):
    """The non-blank lines of a split list, stripped, in order (DatasetError as read_text)."""
    lines = read_text(path, missing_hint, "a text file of ids").splitlines()
    return [line.strip() for line in lines if line.strip()]


def videos_dataset_id(name, split, video_root):
    """The cache key's dataset entry of a dataset whose videos are in video_root."""
    return {"dataset": name, "split": split, "video_root": str(Path(video_root).resolve())}


def annotations_missing(title, path, name, data_root):
    """The suite's note when a downloadable annotation file is not at path yet, or None."""
    if Path(path).is_file():
        return None
    return (f"{title}'s annotations are not in {Path(path).parent}: run `python "
            f"run_msr_retrieval.py --dataset {name} --data_root {data_root} --video_root "
            "VIDEOS` once to download them")


def find_video(video_root, names, extensions=VIDEO_EXTENSIONS):
    """The first file video_root/<name><extension> that exists, names in order, each with every
    extension; a name with an extension of its own (any: DiDeMo's release names end in .3gp,
    .mts, ... or in a bare '.') is tried as it is first.
    returns: str path, or None."""
    for name in names:
        candidates = [name] if "." in Path(name).name else []
        candidates += [name + extension for extension in extensions]
        for candidate in candidates:
            path = os.path.join(video_root, candidate)
            if os.path.isfile(path):
                return path
    return None


def locate_videos(video_ids, video_root, names_of, *, title, split, how_to_get,
                  check_files=True):
    """Each video's file in video_root, looked up under names_of(video_id) (find_video).

    Missing videos stop the run (check_files) naming the first few; otherwise they get a path
    that does not exist, so that decoding reports them and the result is marked partial.
    how_to_get: what the user must do to have the videos (for a missing video_root).
    returns: (paths, missing video ids).
    """
    if video_root is None or not os.path.isdir(video_root):
        where = ("no folder of them (neither --video_root nor the dataset's folder under "
                 "--data_root)" if video_root is None else f"{video_root} is not a folder")
        raise DatasetError(f"{title} videos: {where}; {how_to_get}, then pass --video_root, a "
                           "folder of them")
    paths = [find_video(video_root, names_of(v)) for v in video_ids]
    missing = [v for v, p in zip(video_ids, paths) if p is None]
    if check_files and missing:
        raise DatasetError(f"{len(missing)} of {len(video_ids)} videos of {title} {split} are "
                           f"missing from {video_root}, e.g. {missing[:5]}; add them, or pass "
                           "--skip_bad_videos to leave them out")
    paths = [p or os.path.join(video_root, names_of(v)[0]) for v, p in zip(video_ids, paths)]
    return paths, missing


def videos_missing(title, video_root, default_folder, data_root, how):
    """The suite's note for a dataset whose videos the user brings: None when video_root
    (resolved: None when absent) is a folder, else what to fetch and where to put it."""
    if video_root is not None and os.path.isdir(video_root):
        return None
    return (f"{title} videos are not in {Path(data_root) / default_folder}: {how}, and put them "
            "there (or pass --video_root for a single dataset)")
