"""LSMDC (Rohrbach et al., "Movie Description", IJCV 2017) for text-to-video retrieval: the
1,000-clip public test set of the LSMDC 2016 challenge, one sentence per clip.

The data needs registration with MPII (https://sites.google.com/site/describingmovies/download),
so nothing is downloaded: put the test file in data_root/LSMDC/ and the clips in
data_root/LSMDC/videos/ (or pass --video_root). The test file is CLIP4Clip's
(ArrowLuo/CLIP4Clip, dataloaders/dataloader_lsmdc_retrieval.py), with no header, each line a
query of its clip (in the file's order), six fields separated by tabs:

    <CLIP_ID> <START_ALIGNED> <END_ALIGNED> <START_EXTRACTED> <END_EXTRACTED> <SENTENCE>

A clip id is its movie's folder name and its time span, e.g.
0001_American_Beauty_00.00.51.926-00.00.54.129; MPII's release stores the clip as
<movie>/<clip id>.avi (Frozen in Time reads it so: m-bain/frozen-in-time,
data_loader/LSMDC_dataset.py), the movie being the clip id up to its last "_". CLIP4Clip walks
the whole tree for <clip id>.<ext>; the two agree on the release's layout, and a flat folder of
<clip id>.<ext> files is read too.
"""
from pathlib import Path

import pandas as pd

from clip_hitchhiker.datasets import DatasetEntry, Reference, register
from clip_hitchhiker.datasets.local_files import (locate_videos, read_text, videos_dataset_id,
                                                  videos_missing)
from clip_hitchhiker.errors import DatasetError
from data_loader import VideoDataset

LSMDC_SPLITS = ("test",)
LSMDC_FOLDER, LSMDC_VIDEO_FOLDER = "LSMDC", "LSMDC/videos"
LSMDC_TEST_FILE = "LSMDC16_challenge_1000_publictect.csv"
_REGISTRATION = ("LSMDC needs registration with MPII: ask for access at "
                 "https://sites.google.com/site/describingmovies/download")


def lsmdc_movie(clip_id):
    """The movie folder of a clip id: everything before the last "_" (the time span)."""
    movie, separator, _ = clip_id.rpartition("_")
    return movie if separator else clip_id


def lsmdc_file_names(clip_id):
    """The names a clip may have under the video folder: <movie>/<clip id>, then <clip id>."""
    return [f"{lsmdc_movie(clip_id)}/{clip_id}", clip_id]


def load_lsmdc_queries(path):
    """The queries of an LSMDC test file, in its order: [(clip id, sentence)]. A line that is
    not six tab-separated fields with a clip id and a sentence stops with an error naming it."""
    lines = read_text(path, f"{_REGISTRATION}, then put {LSMDC_TEST_FILE} in "
                            f"{Path(path).parent}", f"UTF-8 text ({LSMDC_TEST_FILE})").splitlines()
    queries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 6 or not fields[0] or not fields[5].strip():
            raise DatasetError(f"{path}, line {number}: expected 6 tab-separated fields (clip "
                               f"id, 4 times, sentence), got {len(fields)}: {line.strip()[:80]!r}")
        queries.append((fields[0], fields[5].strip()))
    if not queries:
        raise DatasetError(f"{path} holds no query")
    return queries


class LSMDCDataset(VideoDataset):
    """LSMDC's 1,000 test clips, every line of the test file a query (see the module docstring).
    missing: the clip ids with no file in video_root."""

    def __init__(self, preprocess, num_frames, video_root, test_file, on_error="raise",
                 check_files=True):
        rows = load_lsmdc_queries(test_file)
        video_ids = list(dict.fromkeys(clip for clip, _ in rows))
        paths, self.missing = locate_videos(
            video_ids, video_root, lsmdc_file_names, title="LSMDC", split="test",
            how_to_get=f"{_REGISTRATION}, and fetch the clips", check_files=check_files)
        self.video_root = video_root
        order = {v: i for i, v in enumerate(video_ids)}
        rows = sorted(rows, key=lambda row: order[row[0]])  # a clip's sentences together
        super().__init__(video_ids, paths, pd.DataFrame(rows, columns=["video_id", "caption"]),
                         preprocess, num_frames, on_error)


def build_lsmdc(preprocess, num_frames, request):
    """The LSMDC entry's build: everything from the user's folder, nothing downloaded."""
    test_file = Path(request.data_root) / LSMDC_FOLDER / LSMDC_TEST_FILE
    built = LSMDCDataset(preprocess, num_frames, request.video_root, test_file,
                         on_error="report", check_files=request.check_files)
    return built, videos_dataset_id("lsmdc", "test", request.video_root)


def lsmdc_missing(data_root, video_root=None):
    """What the suite must fetch before it can run LSMDC, or None when it is on disk."""
    folder = Path(data_root) / LSMDC_FOLDER
    if not (folder / LSMDC_TEST_FILE).is_file():
        return f"{LSMDC_TEST_FILE} is not in {folder}: {_REGISTRATION}, then put it there"
    return videos_missing("LSMDC", video_root, LSMDC_VIDEO_FOLDER, data_root,
                          f"{_REGISTRATION}, fetch the clips as <movie>/<clip id>.avi")


register(DatasetEntry(
    name="lsmdc", title="LSMDC", task="retrieval", splits=LSMDC_SPLITS,
    queries="the 1,000 clips of LSMDC 2016's public test, each line (one sentence) a query",
    metric="recall", build=build_lsmdc, folders=(LSMDC_FOLDER,),
    video_folder=LSMDC_VIDEO_FOLDER, missing=lsmdc_missing,
    references=(Reference("Portillo-Quintero et al. 2021 (arXiv 2102.12443)", "ViT-B/32",
                          "not stated", "mean-pooling", {"R1": 11.3, "R5": 22.7, "R10": 29.2}),),
    counts={"test": {"videos": 1000, "queries": 1000}}))
