"""MSVD (Chen and Dolan, ACL 2011) for text-to-video retrieval: the 670 test videos of the
split of Venugopalan et al. (2015), every English caption of each a query.

The protocol is Portillo-Quintero et al.'s ("A Straightforward Framework For Video Retrieval
Using CLIP", arXiv 2102.12443) and CLIP4Clip's (ArrowLuo/CLIP4Clip,
dataloaders/dataloader_msvd_retrieval.py): the split lists and the captions are those of
Collaborative Experts (albanie/collaborative-experts, misc/datasets/msvd), which CLIP4Clip's
release zip holds:

    msvd_data/test_list.txt       one video id a line (670), e.g. -4wsuPCjDBc_5_15
    msvd_data/raw-captions.pkl    {video id: [caption as a list of tokens, ...]}

A caption is its tokens joined by single spaces, as CLIP4Clip joins them; every caption of a
listed video is a query, in the pickle's order (duplicates too). The videos are the University
of Texas' YouTubeClips.tar: YouTubeClips/<video id>.avi.

The metric is the multi-sentence evaluation of both (CLIP4Clip's metrics.py, from
Deferf/Experiments): t2v ranks each caption's video, with MedR taken by torch.median (the
lower middle rank); v2t scores each video's caption set by its best caption and ranks the
sets (metrics.v2t_group_ranks).
"""
from pathlib import Path

import pandas as pd

from clip_hitchhiker.datasets import DatasetEntry, Reference, UrlOption, register
from clip_hitchhiker.datasets.local_files import locate_videos, read_id_list, videos_dataset_id
from clip_hitchhiker.downloads import COMPLETE_MARKER, fetch_and_extract, load_restricted_pickle
from clip_hitchhiker.errors import DatasetError
from data_loader import VideoDataset

MSVD_ANNOTATIONS_URL = "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msvd_data.zip"
MSVD_VIDEOS_URL = "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar"
MSVD_SPLITS = ("test",)
MSVD_FOLDER, MSVD_VIDEO_FOLDER = "msvd_data", "YouTubeClips"


def load_msvd_split(folder, split="test"):
    """The queries of an MSVD split: (video ids in the list's order, [(video id, caption)],
    each video's captions together in the pickle's order). A listed video without captions,
    or a caption that is neither text nor a list of tokens, stops with a DatasetError."""
    list_path, captions_path = Path(folder) / f"{split}_list.txt", Path(folder) / "raw-captions.pkl"
    video_ids = read_id_list(list_path, "download MSVD's annotations (the default) or set "
                                        "--data_root to the folder that holds msvd_data/")
    captions = load_restricted_pickle(captions_path)
    if not isinstance(captions, dict):
        raise DatasetError(f"{captions_path} should map video id -> captions, got "
                           f"{type(captions).__name__}")
    absent = [v for v in video_ids if not captions.get(v)]
    if absent:
        raise DatasetError(f"{len(absent)} videos of {list_path} have no caption in "
                           f"{captions_path}, e.g. {absent[:3]}; delete {folder} and download "
                           "it again")
    rows = [(v, caption_text(captions_path, v, c)) for v in video_ids for c in captions[v]]
    return video_ids, rows


def caption_text(path, video_id, caption):
    """A caption as CLIP4Clip encodes it: a list of tokens joined by single spaces (text as
    it is)."""
    if isinstance(caption, str):
        text = caption
    elif isinstance(caption, (list, tuple)) and all(isinstance(t, str) for t in caption):
        text = " ".join(caption)
    else:
        raise DatasetError(f"{path}: a caption of {video_id} is {caption!r}, neither text nor a "
                           "list of tokens")
    if not text.strip():
        raise DatasetError(f"{path}: {video_id} has an empty caption")
    return text


class MSVDDataset(VideoDataset):
    """MSVD's test videos, every caption a query (see the module docstring).
    missing: the video ids with no file in video_root."""

    def __init__(self, preprocess, num_frames, video_root, split="test", data_root="./data",
                 on_error="raise", check_files=True):
        if split not in MSVD_SPLITS:
            raise ValueError(f"MSVD split must be one of {MSVD_SPLITS}, got {split!r}")
        video_ids, rows = load_msvd_split(Path(data_root) / MSVD_FOLDER, split)
        paths, self.missing = locate_videos(
            video_ids, video_root, lambda v: [v], title="MSVD", split=split,
            how_to_get=f"download {MSVD_VIDEOS_URL}", check_files=check_files)
        self.video_root = video_root
        queries = pd.DataFrame(rows, columns=["video_id", "caption"])
        super().__init__(video_ids, paths, queries, preprocess, num_frames, on_error)


def build_msvd(preprocess, num_frames, request):
    """The MSVD entry's build: the annotations downloaded (CLIP4Clip's zip), and the videos
    from --video_root or else downloaded (YouTubeClips.tar) under data_root."""
    data_root = Path(request.data_root)
    default_videos = data_root / MSVD_VIDEO_FOLDER
    video_root = request.video_root
    if request.download:
        fetch_and_extract(request.urls["msvd"], data_root, "msvd_data.zip", MSVD_FOLDER)
        if video_root is None or Path(video_root).resolve() == default_videos.resolve():
            video_root = fetch_and_extract(request.urls["msvd_videos"], data_root,
                                           "YouTubeClips.tar", MSVD_VIDEO_FOLDER)
    split = request.split or MSVD_SPLITS[0]
    built = MSVDDataset(preprocess, num_frames, video_root and str(video_root), split=split,
                        data_root=data_root, on_error="report", check_files=request.check_files)
    return built, videos_dataset_id("msvd", split, video_root)


def msvd_missing(data_root, video_root=None):
    """What the suite must fetch before it can run MSVD, or None when it is on disk."""
    annotations = (Path(data_root) / MSVD_FOLDER / COMPLETE_MARKER).is_file()
    videos = video_root is not None and Path(video_root).is_dir()
    if annotations and videos:
        return None
    return (f"MSVD is not in {data_root}: run `python run_msr_retrieval.py --dataset msvd "
            f"--data_root {data_root}` once to download its annotations and videos")


register(DatasetEntry(
    name="msvd", title="MSVD", task="retrieval", splits=MSVD_SPLITS,
    queries="every English caption of the 670 test videos is a query (CLIP4Clip's "
            "raw-captions.pkl, tokens joined by spaces)", metric="recall", build=build_msvd,
    folders=(MSVD_FOLDER,), video_folder=MSVD_VIDEO_FOLDER,
    urls=(UrlOption("msvd", MSVD_ANNOTATIONS_URL,
                    "where to download MSVD's split lists and captions (CLIP4Clip's zip)"),
          UrlOption("msvd_videos", MSVD_VIDEOS_URL, "where to download MSVD's videos (tar)")),
    missing=msvd_missing, v2t="caption_groups", t2v_median="lower",
    references=(Reference("Portillo-Quintero et al. 2021 (arXiv 2102.12443)", "ViT-B/32",
                          "not stated", "mean-pooling", {"R1": 37.0, "R5": 64.1, "R10": 73.8}),),
    counts={"test": {"videos": 670}}))
