"""Charades-STA (Gao et al., "TALL: Temporal Activity Localization via Language Query", ICCV
2017): sentences with the moment of a Charades video they describe. The test split is 3,720
sentence-moment pairs over 1,334 of Charades' videos.

The annotation file, charades_sta_test.txt, has one query a line:
    AO8RW 0.0 6.9##a person is putting a book on a shelf.
(video id, start and end in seconds, '##', the sentence). It has no stable direct download (TALL
distributes it through a shared drive): pass it with --charades_sta_annotations FILE|URL, or put
it at data_root/Charades-STA/charades_sta_test.txt. The videos are Charades' 480p videos
(clip_hitchhiker.datasets.charades), data_root/Charades_v1_480/<id>.mp4.
"""
import hashlib
import math
from pathlib import Path
from urllib.parse import urlparse

from clip_hitchhiker.datasets import DatasetEntry, register
from clip_hitchhiker.downloads import download_file
from clip_hitchhiker.errors import DatasetError

CHARADES_STA_FOLDER = "Charades-STA"
CHARADES_STA_TEST = "charades_sta_test.txt"
_LINE_FORM = "'VIDEO START END##sentence'"


def charades_sta_annotation_file(source, data_root="./data", progress=True):
    """The annotation file to read: source is a file, a URL (downloaded, resumably, into
    data_root/Charades-STA/, as <name>-<digest of the URL>, unless already there) or None
    (data_root/Charades-STA/charades_sta_test.txt).
    returns: Path."""
    folder = Path(data_root) / CHARADES_STA_FOLDER
    if source is None:
        path = folder / CHARADES_STA_TEST
        if not path.is_file():
            raise DatasetError(f"missing {path}; pass the Charades-STA test annotations "
                               f"({CHARADES_STA_TEST}, from TALL) with "
                               "--charades_sta_annotations FILE|URL")
        return path
    if urlparse(str(source)).scheme in ("http", "https"):
        # Named for the whole URL: shared-drive links differ only in their query ("uc?id=..."),
        # and one URL's file must never be read for another.
        name = Path(Path(urlparse(source).path).name or CHARADES_STA_TEST)
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        path = folder / f"{name.stem}-{digest}{name.suffix}"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            download_file(source, path, progress=progress)
        return path
    path = Path(source)
    if not path.is_file():
        raise DatasetError(f"--charades_sta_annotations {source} is neither a file nor an "
                           "http(s) URL")
    return path


def load_charades_sta(path):
    """The queries of a Charades-STA annotation file, in its order.

    returns: list of (video id, start, end, sentence), times in seconds as written (moments
    past a video's end are clipped when scored, not here). Blank lines are skipped; any other
    line not of the form 'VIDEO START END##sentence', with 0 <= START <= END, stops with an
    error naming the file and line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DatasetError(f"missing {path}; pass --charades_sta_annotations FILE|URL") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text ({e}); is it charades_sta_test.txt?") from e
    queries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            queries.append(_parse_line(line, f"{path}, line {number}"))
    if not queries:
        raise DatasetError(f"{path} holds no query (expected lines {_LINE_FORM})")
    return queries


def _parse_line(line, where):
    head, separator, sentence = line.partition("##")
    fields = head.split()
    if not separator or len(fields) != 3 or not sentence.strip():
        raise DatasetError(f"{where}: expected {_LINE_FORM}, got {line.strip()[:80]!r}")
    video_id = fields[0]
    start, end = (check_time(value, where) for value in fields[1:])
    if start > end:
        raise DatasetError(f"{where}: start {start:g} is after end {end:g}")
    return video_id, start, end, sentence.strip()


def check_time(value, where):
    """A finite, non-negative number of seconds, or a DatasetError naming `where`."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds >= 0):
        raise DatasetError(f"{where}: {value!r} is not a time in seconds (a number >= 0)")
    return seconds


register(DatasetEntry(
    name="charades_sta", title="Charades-STA", task="moments", splits=("test",),
    queries="each sentence is a query, localised in its own video (docs/moments.md)",
    metric="moments", folders=(CHARADES_STA_FOLDER, "Charades_v1_480"), in_suite=False,
    counts={"test": {"videos": 1334, "queries": 3720}}))
