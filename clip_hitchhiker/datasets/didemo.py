"""DiDeMo (Hendricks et al., "Localizing Moments in Video with Natural Language", ICCV 2017)
for paragraph-to-video retrieval: each test video is one query, every description of the video
concatenated.

The protocol is CLIP4Clip's (ArrowLuo/CLIP4Clip, dataloaders/dataloader_didemo_retrieval.py):
the test split is the 1,004 videos of Collaborative Experts' test_list.txt
(albanie/collaborative-experts, misc/datasets/didemo/test_list.txt, one release name a line),
and their descriptions come from the public test_data.json (LisaAnne/LocalizingMoments, data/),
a JSON list of

    {"annotation_id": 1, "description": "a man walks in", "video": "<flickr id>.mov",
     "times": [[0, 1], [0, 0], ...], "download_link": "...", "num_segments": 6}

test_data.json describes 1,037 videos: CLIP4Clip keeps only those of the list, and so does this
loader (the other 33 would make the figures incomparable). A video's descriptions are joined by
single spaces in the file's order (CLIP4Clip's), not in the order of their moments: the moments
are annotators' segments, and CLIP4Clip ignores them for retrieval. The videos come from Flickr
through the release's download scripts, and many are gone (LocalizingMoments'
download_videos_AWS.py fetches YFCC100M's copies instead): the ones missing from --video_root
are counted, named and, with --skip_bad_videos, left out (the result is marked partial;
CLIP4Clip drops them silently).
"""
import os
from pathlib import Path

import pandas as pd

from clip_hitchhiker.datasets import DatasetEntry, UrlOption, register
from clip_hitchhiker.datasets.activitynet import ParagraphQueries
from clip_hitchhiker.datasets.local_files import (annotations_missing, locate_videos, read_id_list,
                                                  read_json, videos_dataset_id, videos_missing)
from clip_hitchhiker.downloads import fetch_checked_file
from clip_hitchhiker.errors import DatasetError
from data_loader import VideoDataset

DIDEMO_TEST_URL = ("https://raw.githubusercontent.com/LisaAnne/LocalizingMoments/master/data/"
                   "test_data.json")
DIDEMO_TEST_LIST_URL = ("https://raw.githubusercontent.com/albanie/collaborative-experts/master/"
                        "misc/datasets/didemo/test_list.txt")
DIDEMO_SPLITS = ("test",)
DIDEMO_FOLDER, DIDEMO_VIDEO_FOLDER = "DiDeMo", "DiDeMo/videos"
DIDEMO_ANNOTATIONS, DIDEMO_TEST_LIST = "test_data.json", "test_list.txt"
_GET_VIDEOS = ("fetch them with LocalizingMoments' download/download_videos_AWS.py (YFCC100M's "
               "copies; github.com/LisaAnne/LocalizingMoments)")


def load_didemo_paragraphs(path):
    """returns: {video: [descriptions in the file's order]}, videos in order of first
    appearance. Entries are checked: a dict with a non-empty "description" and a "video"."""
    entries = read_json(path, "download DiDeMo's annotations (the default) or set --data_root")
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{path} should be a non-empty JSON list of descriptions "
                           "(LocalizingMoments' test_data.json)")
    paragraphs = {}
    for number, entry in enumerate(entries, start=1):
        description = entry.get("description") if isinstance(entry, dict) else None
        video = entry.get("video") if isinstance(entry, dict) else None
        if not isinstance(video, str) or not isinstance(description, str) \
                or not description.strip():
            raise DatasetError(f"{path}: entry {number} needs a video and a non-empty "
                               f"description, got {str(entry)[:80]}")
        paragraphs.setdefault(video, []).append(description.strip())
    return paragraphs


def check_didemo_file(path):
    """fetch_checked_file's check: the download is DiDeMo's annotation list."""
    load_didemo_paragraphs(path)


def load_didemo_test_split(annotation_file, test_list):
    """The test split's paragraphs: {video: [descriptions in the file's order]} for the videos
    of test_list (Collaborative Experts' test_list.txt), in its order. A listed video that
    test_data.json does not describe stops with a DatasetError."""
    paragraphs = load_didemo_paragraphs(annotation_file)
    video_ids = read_id_list(test_list, "download DiDeMo's test split (the default) or set "
                                        "--data_root")
    if not video_ids:
        raise DatasetError(f"{test_list} lists no video; delete it to download it again")
    absent = [v for v in video_ids if v not in paragraphs]
    if absent:
        raise DatasetError(f"{len(absent)} videos of {test_list} have no description in "
                           f"{annotation_file}, e.g. {absent[:3]}; the list must be Collaborative "
                           "Experts' DiDeMo test_list.txt (1,004 videos)")
    return {v: paragraphs[v] for v in video_ids}


def didemo_file_names(video):
    """The names a DiDeMo video may have in the user's folder: the release's own name, whatever
    its extension (<flickr id>.mov, .3gp, .mts, or none after a final '.'), that name with a
    video extension added (download_videos_AWS.py saves <flickr id>.mov.mp4), then its stem
    with any video extension (a converted copy)."""
    return [video, os.path.splitext(video)[0]]


class DiDeMoDataset(ParagraphQueries, VideoDataset):
    """DiDeMo's test videos, one paragraph query each (see the module docstring).
    paragraph: "concat" (the descriptions joined into one caption, cut to the text encoder's
    context, as CLIP4Clip does) or "mean" (their unit embeddings averaged).
    missing: the video ids with no file in video_root."""

    def __init__(self, preprocess, num_frames, video_root, annotation_file, test_list,
                 paragraph="concat", on_error="raise", check_files=True):
        self.paragraphs = load_didemo_test_split(annotation_file, test_list)
        self.paragraph, self.video_root = paragraph, video_root
        video_ids = list(self.paragraphs)
        paths, self.missing = locate_videos(video_ids, video_root, didemo_file_names,
                                            title="DiDeMo", split="test", how_to_get=_GET_VIDEOS,
                                            check_files=check_files)
        queries = pd.DataFrame({"video_id": video_ids,
                                "caption": [" ".join(self.paragraphs[v]) for v in video_ids]})
        super().__init__(video_ids, paths, queries, preprocess, num_frames, on_error)


def build_didemo(preprocess, num_frames, request):
    """The DiDeMo entry's build: see clip_hitchhiker.datasets.DatasetEntry."""
    folder = Path(request.data_root) / DIDEMO_FOLDER
    annotation_file, test_list = folder / DIDEMO_ANNOTATIONS, folder / DIDEMO_TEST_LIST
    if request.download:
        fetch_checked_file(request.urls["didemo"], annotation_file, check_didemo_file)
        fetch_checked_file(request.urls["didemo_test_list"], test_list,
                           lambda path: load_didemo_test_split(annotation_file, path))
    built = DiDeMoDataset(preprocess, num_frames, request.video_root, annotation_file, test_list,
                          paragraph=request.paragraph, on_error="report",
                          check_files=request.check_files)
    return built, videos_dataset_id("didemo", "test", request.video_root)


def didemo_missing(data_root, video_root=None):
    """What the suite must fetch before it can run DiDeMo, or None when it is on disk."""
    folder = Path(data_root) / DIDEMO_FOLDER
    return (annotations_missing("DiDeMo", folder / DIDEMO_ANNOTATIONS, "didemo", data_root)
            or annotations_missing("DiDeMo", folder / DIDEMO_TEST_LIST, "didemo", data_root)
            or videos_missing("DiDeMo", video_root, DIDEMO_VIDEO_FOLDER, data_root, _GET_VIDEOS))


register(DatasetEntry(
    name="didemo", title="DiDeMo", task="retrieval", splits=DIDEMO_SPLITS,
    queries="paragraph-to-video: each test video is one query, its descriptions joined in the "
            "file's order (--paragraph concat or mean)", metric="recall", build=build_didemo,
    folders=(DIDEMO_FOLDER,), video_folder=DIDEMO_VIDEO_FOLDER,
    urls=(UrlOption("didemo", DIDEMO_TEST_URL,
                    "where to download DiDeMo's test_data.json"),
          UrlOption("didemo_test_list", DIDEMO_TEST_LIST_URL,
                    "where to download DiDeMo's test split (Collaborative Experts' "
                    "test_list.txt)")),
    missing=didemo_missing, counts={"test": {"videos": 1004, "queries": 1004}}))
