"""VATEX (Wang et al., ICCV 2019) for text-to-video retrieval: the 1,500-video test split of
HGR (Chen et al., "Fine-grained Video-Text Retrieval with Hierarchical Graph Reasoning", CVPR
2020), every English caption a query (ten per video).

HGR split VATEX's public validation set (3,000 videos) into 1,500 for validation and 1,500 for
testing; CLIP2Video (CrossmodalGroup/CLIP2Video, dataloaders/dataloader_vatexEnglish_frame.py)
and the CLIP4Clip-based work since read the test ids from vatex_test_HGR.txt and the captions'
"enCap" lists. The captions here come from VATEX's own public file,
vatex_validation_v1.0.json (downloaded), a JSON list of

    {"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": [10 English captions], "chCap": [...]}

The 1,500 test ids have no stable public host: put HGR's list, one videoID a line, at
data_root/VATEX/test_list.txt (CLIP2Video's vatex_test_HGR.txt is that file). The videos are
YouTube clips: <videoID>.mp4 in --video_root. The metric is CLIP4Clip's multi-sentence one,
as for MSVD (t2v MedR by torch.median, v2t by caption sets).
"""
from pathlib import Path

import pandas as pd

from clip_hitchhiker.datasets import DatasetEntry, UrlOption, register
from clip_hitchhiker.datasets.local_files import (annotations_missing, locate_videos, read_id_list,
                                                  read_json, videos_dataset_id, videos_missing)
from clip_hitchhiker.downloads import fetch_checked_file
from clip_hitchhiker.errors import DatasetError
from data_loader import VideoDataset

VATEX_VALIDATION_URL = "https://eric-xw.github.io/vatex-website/data/vatex_validation_v1.0.json"
VATEX_SPLITS = ("test",)
VATEX_FOLDER, VATEX_VIDEO_FOLDER = "VATEX", "VATEX/videos"
VATEX_CAPTIONS, VATEX_TEST_LIST = "vatex_validation_v1.0.json", "test_list.txt"
_TEST_LIST_SOURCE = ("HGR's 1,500 test ids (CLIP2Video's vatex_test_HGR.txt, or HGR's "
                     "tst_names.npy written one id a line)")
_GET_VIDEOS = "fetch the YouTube clips as <videoID>.mp4 (VATEX's site lists them)"


def load_vatex_captions(path):
    """returns: {videoID: [English captions]} of a VATEX annotation file, checked."""
    entries = read_json(path, "download VATEX's annotations (the default) or set --data_root")
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{path} should be a non-empty JSON list of videos "
                           f"({VATEX_CAPTIONS})")
    captions = {}
    for number, entry in enumerate(entries, start=1):
        video = entry.get("videoID") if isinstance(entry, dict) else None
        english = entry.get("enCap") if isinstance(entry, dict) else None
        if not isinstance(video, str) or not isinstance(english, list) or not english or not all(
                isinstance(c, str) and c.strip() for c in english):
            raise DatasetError(f"{path}: entry {number} needs a videoID and a list of English "
                               f"captions (enCap), got {str(entry)[:80]}")
        captions[video] = [c.strip() for c in english]
    return captions


def check_vatex_file(path):
    """fetch_checked_file's check: the download is a VATEX annotation file."""
    load_vatex_captions(path)


def load_vatex_split(folder):
    """The HGR test split: (video ids in the list's order, [(video id, caption)])."""
    list_path = Path(folder) / VATEX_TEST_LIST
    video_ids = read_id_list(list_path, f"put {_TEST_LIST_SOURCE} there")
    captions = load_vatex_captions(Path(folder) / VATEX_CAPTIONS)
    absent = [v for v in video_ids if v not in captions]
    if absent:
        raise DatasetError(f"{len(absent)} videos of {list_path} are not in VATEX's validation "
                           f"set, e.g. {absent[:3]}; the list must hold {_TEST_LIST_SOURCE}")
    return video_ids, [(v, c) for v in video_ids for c in captions[v]]


class VATEXDataset(VideoDataset):
    """VATEX's HGR test videos, every English caption a query (see the module docstring).
    missing: the video ids with no file in video_root."""

    def __init__(self, preprocess, num_frames, video_root, data_root="./data", on_error="raise",
                 check_files=True):
        video_ids, rows = load_vatex_split(Path(data_root) / VATEX_FOLDER)
        paths, self.missing = locate_videos(video_ids, video_root, lambda v: [v], title="VATEX",
                                            split="test", how_to_get=_GET_VIDEOS,
                                            check_files=check_files)
        self.video_root = video_root
        super().__init__(video_ids, paths, pd.DataFrame(rows, columns=["video_id", "caption"]),
                         preprocess, num_frames, on_error)


def build_vatex(preprocess, num_frames, request):
    """The VATEX entry's build: see clip_hitchhiker.datasets.DatasetEntry."""
    folder = Path(request.data_root) / VATEX_FOLDER
    if request.download:
        fetch_checked_file(request.urls["vatex"], folder / VATEX_CAPTIONS, check_vatex_file)
    built = VATEXDataset(preprocess, num_frames, request.video_root, request.data_root,
                         on_error="report", check_files=request.check_files)
    return built, videos_dataset_id("vatex", "test", request.video_root)


def vatex_missing(data_root, video_root=None):
    """What the suite must fetch before it can run VATEX, or None when it is on disk."""
    folder = Path(data_root) / VATEX_FOLDER
    if not (folder / VATEX_TEST_LIST).is_file():
        return f"{folder / VATEX_TEST_LIST} is missing: put {_TEST_LIST_SOURCE} there"
    return annotations_missing("VATEX", folder / VATEX_CAPTIONS, "vatex", data_root) or \
        videos_missing("VATEX", video_root, VATEX_VIDEO_FOLDER, data_root, _GET_VIDEOS)


register(DatasetEntry(
    name="vatex", title="VATEX", task="retrieval", splits=VATEX_SPLITS,
    queries="every English caption (enCap, ten a video) of HGR's 1,500 test videos is a query",
    metric="recall", build=build_vatex, folders=(VATEX_FOLDER,),
    video_folder=VATEX_VIDEO_FOLDER,
    urls=(UrlOption("vatex", VATEX_VALIDATION_URL,
                    "where to download VATEX's vatex_validation_v1.0.json"),),
    missing=vatex_missing, v2t="caption_groups", t2v_median="lower",
    counts={"test": {"videos": 1500, "queries": 15000}}))
