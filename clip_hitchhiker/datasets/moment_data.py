"""The moment-localisation datasets: Charades-STA and ActivityNet Captions' sentences, each a
query with its moment, and their videos decoded by time (clip_hitchhiker.video.sampling: the frame
nearest the middle of each 1/fps-second segment, with its presentation time)."""
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset

from clip_hitchhiker.datasets.activitynet import (ACTIVITYNET_CAPTIONS_URL, ACTIVITYNET_SPLITS,
                                         download_activitynet_captions, entry_sentences,
                                         find_video, read_annotations)
from clip_hitchhiker.datasets.charades import CHARADES_VIDEOS_URL
from clip_hitchhiker.datasets.charades_sta import (check_time, charades_sta_annotation_file,
                                          load_charades_sta)
from clip_hitchhiker.downloads import fetch_and_extract, sha256_file
from clip_hitchhiker.embedding_cache import fingerprint_files
from clip_hitchhiker.errors import DatasetError, VideoDecodeError
from data_loader import read_video_times

MOMENT_DATASETS = ("charades_sta", "activitynet")


def load_activitynet_moments(path):
    """Every sentence of an ActivityNet Captions split (val_1.json, val_2.json) as a query.

    returns: list of (video id, start, end, sentence): videos in the file's order, each
    video's sentences in the annotation's order. The file and each entry are checked as
    retrieval checks them (activitynet.read_annotations, entry_sentences), and a timestamp that
    is not [start, end] with 0 <= start <= end stops with an error naming the video and the
    sentence's position (from 1).
    """
    queries = []
    for video_id, entry in read_annotations(path).items():
        timestamps, sentences = entry_sentences(path, video_id, entry)
        for number, (stamp, sentence) in enumerate(zip(timestamps, sentences), start=1):
            where = f"{path}: video {video_id}, sentence {number}"
            if not (isinstance(stamp, list) and len(stamp) == 2):
                raise DatasetError(f"{where}: timestamp {stamp!r} is not [start, end]")
            start, end = (check_time(value, where) for value in stamp)
            if start > end:
                raise DatasetError(f"{where}: start {start:g} is after end {end:g}")
            queries.append((video_id, start, end, sentence.strip()))
    return queries


class MomentVideos(Dataset):
    """One item per video, decoded by time: {"index", "video_id", "video", "error", "decoded"}
    ("decoded": read_video_times' info, with "times" and "duration"; {} for a failed video).

    queries: DataFrame (video_id, caption, start, end), one row per query; preprocess: a
    FramePreprocess ([S, 3, R, R] items) or None (the decoded uint8 frames). A video that
    fails to decode gives an empty "video" and its message in "error" (the caller decides).
    """

    task = "moments"

    def __init__(self, video_ids, video_paths, queries, preprocess, fps, max_frames=None):
        self.video_ids = list(video_ids)
        self.video_paths = [str(p) for p in video_paths]
        self.queries = queries.reset_index(drop=True)
        self.preprocess, self.fps, self.max_frames = preprocess, fps, max_frames

    def __len__(self):
        return len(self.video_ids)

    def text_rows(self):
        """One text per query, its sentence (as VideoDataset.text_rows)."""
        return self.queries["caption"].tolist(), list(range(len(self.queries)))

    def __getitem__(self, index):
        item = {"index": index, "video_id": self.video_ids[index], "error": "", "decoded": {}}
        try:
            frames, item["decoded"] = read_video_times(self.video_paths[index], self.fps,
                                                       self.max_frames)
            item["video"] = frames if self.preprocess is None else self.preprocess(frames)
        except VideoDecodeError as e:
            item["error"], item["video"] = str(e), torch.zeros(0)
        return item


def build_moment_dataset(preprocess, fps, max_frames, *, dataset, split=None, data_root="./data",
                         video_root=None, annotations=None, videos_url=CHARADES_VIDEOS_URL,
                         activitynet_url=ACTIVITYNET_CAPTIONS_URL, check_files=True,
                         download=True):
    """The queries and videos of a moment benchmark (annotations downloaded where they can be).

    dataset: "charades_sta" (annotations: the --charades_sta_annotations FILE|URL or None; the
    videos under data_root/Charades_v1_480, downloaded from videos_url) or "activitynet" (split
    val_1 or val_2; videos from video_root). check_files: stop, naming the first missing videos,
    if any is missing. returns: (MomentVideos, dataset_id: JSON-able, names the data and the
    queries, for the cache key and the report).
    """
    if dataset == "charades_sta":
        if split not in (None, "test"):
            raise ValueError(f"Charades-STA has the split 'test', got {split!r}")
        split = "test"
        annotation_file = charades_sta_annotation_file(annotations, data_root, download)
        queries = load_charades_sta(annotation_file)
        if download:
            fetch_and_extract(videos_url, data_root, "Charades_v1_480.zip", "Charades_v1_480",
                              progress=True)
        video_ids = list(dict.fromkeys(q[0] for q in queries))
        paths = [str(Path(data_root) / "Charades_v1_480" / f"{v}.mp4") for v in video_ids]
        where = Path(data_root) / "Charades_v1_480"
    elif dataset == "activitynet":
        split = split or ACTIVITYNET_SPLITS[0]
        if split not in ACTIVITYNET_SPLITS:
            raise ValueError(f"ActivityNet split must be one of {ACTIVITYNET_SPLITS}, got "
                             f"{split!r}")
        if video_root is None or not os.path.isdir(video_root):
            raise DatasetError(f"ActivityNet videos are not downloadable from a stable host: "
                               f"pass --video_root, a folder of v_<id>.mp4/.mkv/.webm files "
                               f"(got {video_root!r})")
        if download:
            download_activitynet_captions(data_root, activitynet_url, progress=True)
        annotation_file = Path(data_root) / "ActivityNetCaptions" / f"{split}.json"
        queries = load_activitynet_moments(annotation_file)
        video_ids = list(dict.fromkeys(q[0] for q in queries))
        paths = [find_video(video_root, v) or os.path.join(video_root, f"{v}.mp4")
                 for v in video_ids]
        where = video_root
    else:
        raise ValueError(f"dataset must be one of {MOMENT_DATASETS}, got {dataset!r}")
    missing = [v for v, p in zip(video_ids, paths) if not os.path.isfile(p)]
    if check_files and missing:
        raise DatasetError(f"{len(missing)} of {len(video_ids)} videos of {dataset} {split} are "
                           f"missing from {where}, e.g. {missing[:5]}; add them, or pass "
                           "--skip_bad_videos to leave them out")
    table = pd.DataFrame(queries, columns=["video_id", "start", "end", "caption"])
    built = MomentVideos(video_ids, paths, table, preprocess, fps, max_frames)
    built.annotation_file, built.missing = str(annotation_file), missing
    dataset_id = {"dataset": dataset, "task": "moments", "split": split,
                  "annotations_sha256": sha256_file(annotation_file),
                  "queries_sha256": hashlib.sha256(json.dumps(queries).encode()).hexdigest(),
                  "videos_fingerprint": fingerprint_files(paths)}
    return built, dataset_id
