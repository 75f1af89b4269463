"""DiDeMo (Hendricks et al., "Localizing Moments in Video with Natural Language", ICCV 2017)
for paragraph-to-video retrieval: each test video is one query, every description of the video
concatenated.

The protocol is CLIP4Clip's (ArrowLuo/CLIP4Clip, dataloaders/dataloader_didemo_retrieval.py),
also Frozen in Time's: the test split (1,004 videos, the split of Collaborative Experts,
albanie/collaborative-experts misc/datasets/didemo) is the videos of the public test_data.json
(LisaAnne/LocalizingMoments, data/), a JSON list of

    {"annotation_id": 1, "description": "a man walks in", "video": "<flickr id>.mov",
     "times": [[0, 1], [0, 0], ...], "download_link": "...", "num_segments": 6}

A video's descriptions are joined by single spaces in the file's order (CLIP4Clip's), not in
the order of their moments: the moments are annotators' segments, and CLIP4Clip ignores them
for retrieval. The videos come from Flickr through the release's download script, and many are
gone (LocalizingMoments' download_videos_AWS.py fetches YFCC100M's copies instead): the ones
missing from --video_root are counted, named and, with --skip_bad_videos, left out (the result
is marked partial; CLIP4Clip drops them silently).
"""
from pathlib import Path

import pandas as pd

from clip_hitchhiker.datasets import DatasetEntry, UrlOption, register
from clip_hitchhiker.datasets.activitynet import ParagraphQueries
from clip_hitchhiker.datasets.local_files import (annotations_missing, locate_videos, read_json,
                                                  videos_dataset_id, videos_missing)
from clip_hitchhiker.downloads import fetch_checked_file
from clip_hitchhiker.errors import DatasetError
from data_loader import VideoDataset

DIDEMO_TEST_URL = ("https://raw.githubusercontent.com/LisaAnne/LocalizingMoments/master/data/"
                   "test_data.json")
DIDEMO_SPLITS = ("test",)
DIDEMO_FOLDER, DIDEMO_VIDEO_FOLDER = "DiDeMo", "DiDeMo/videos"
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


def didemo_file_names(video):
    """The names a DiDeMo video may have in the user's folder: the release's own name
    (<flickr id>.mov, ...), that name with a video extension added (download_videos_AWS.py saves
    <flickr id>.mov.mp4), then its stem with any video extension (a converted copy)."""
    return [video, Path(video).stem]


class DiDeMoDataset(ParagraphQueries, VideoDataset):
    """DiDeMo's test videos, one paragraph query each (see the module docstring).
    paragraph: "concat" (the descriptions joined into one caption, cut to the text encoder's
    context, as CLIP4Clip does) or "mean" (their unit embeddings averaged).
    missing: the video ids with no file in video_root."""

    def __init__(self, preprocess, num_frames, video_root, annotation_file, paragraph="concat",
                 on_error="raise", check_files=True):
        self.paragraphs = load_didemo_paragraphs(annotation_file)
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
    annotation_file = Path(request.data_root) / DIDEMO_FOLDER / "test_data.json"
    if request.download:
        fetch_checked_file(request.urls["didemo"], annotation_file, check_didemo_file)
    built = DiDeMoDataset(preprocess, num_frames, request.video_root, annotation_file,
                          paragraph=request.paragraph, on_error="report",
                          check_files=request.check_files)
    return built, videos_dataset_id("didemo", "test", request.video_root)


def didemo_missing(data_root, video_root=None):
    """What the suite must fetch before it can run DiDeMo, or None when it is on disk."""
    annotations = Path(data_root) / DIDEMO_FOLDER / "test_data.json"
    return (annotations_missing("DiDeMo", annotations, "didemo", data_root)
            or videos_missing("DiDeMo", video_root, DIDEMO_VIDEO_FOLDER, data_root, _GET_VIDEOS))


register(DatasetEntry(
    name="didemo", title="DiDeMo", task="retrieval", splits=DIDEMO_SPLITS,
    queries="paragraph-to-video: each test video is one query, its descriptions joined in the "
            "file's order (--paragraph concat or mean)", metric="recall", build=build_didemo,
    folders=(DIDEMO_FOLDER,), video_folder=DIDEMO_VIDEO_FOLDER,
    urls=(UrlOption("didemo", DIDEMO_TEST_URL,
                    "where to download DiDeMo's test_data.json"),),
    missing=didemo_missing, counts={"test": {"videos": 1004, "queries": 1004}}))
