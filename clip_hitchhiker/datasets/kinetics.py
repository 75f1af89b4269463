"""Kinetics-400 (Kay et al., arXiv 1705.06950) for zero-shot action classification: the
validation split, 400 classes, each class name filled into prompt templates, scored by top-1
and top-5 accuracy and mean class accuracy.

The annotations are the CVDF's public copy of DeepMind's CSV (cvdfoundation/kinetics-dataset):

    val.csv    label,youtube_id,time_start,time_end,split[,is_cc]
               abseiling,0wR5jVB-WPk,417,427,val

A video is the clip <youtube_id>_<time_start:06d>_<time_end:06d>.mp4, the name the CVDF's
tarballs and the ActivityNet crawler give it, in --video_root or in a folder named for its
class. The classes are the CSV's labels, sorted (the index order of mmaction2 and torchvision).
The default prompts are CLIP's 28 Kinetics templates (openai/CLIP, data/prompts.md,
"Kinetics700"), averaged per class as CLIP does.

The metrics follow mmaction2 (open-mmlab/mmaction2, mmaction/evaluation/functional/
accuracy.py), the reference the field's Kinetics figures come from, with one rule for ties:
    top-k: a video counts if its class is among the first k classes by score, ties going to
        the lower class index (numpy's argmax for k = 1; mmaction2's argsort leaves the order
        of tied scores to the sort);
    mean class accuracy: mmaction2's mean_class_accuracy: the top-1 prediction (argmax) of each
        video, and over every class that is a video's label or a prediction, the share of its
        videos predicted right; a class predicted but with no video counts 0 (so a class left
        without videos lowers the mean), a class that is neither is not counted.
"""
import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from clip_hitchhiker.datasets import DatasetEntry, UrlOption, register
from clip_hitchhiker.datasets.charades import ClassNameQueries, check_prompts
from clip_hitchhiker.datasets.local_files import (annotations_missing, locate_videos, read_text,
                                                  videos_dataset_id, videos_missing)
from clip_hitchhiker.downloads import fetch_checked_file
from clip_hitchhiker.errors import DatasetError
from data_loader import VideoDataset

KINETICS400_VAL_URL = "https://s3.amazonaws.com/kinetics/400/annotations/val.csv"
KINETICS_SPLITS = ("val",)
KINETICS_FOLDER, KINETICS_VIDEO_FOLDER = "Kinetics400", "Kinetics400/videos"
_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
_GET_VIDEOS = ("fetch the validation clips with the CVDF's scripts "
               "(github.com/cvdfoundation/kinetics-dataset)")
# CLIP's Kinetics prompt templates (openai/CLIP, data/prompts.md, "Kinetics700").
CLIP_KINETICS_TEMPLATES = tuple(
    f"{start}{middle}{{}}."
    for start in ("a photo of ", "a video of ", "a example of ", "a demonstration of ")
    for middle in ("", "a person ", "a person using ", "a person doing ", "a person during ",
                   "a person performing ", "a person practicing "))


def kinetics_video_id(youtube_id, time_start, time_end):
    """The clip's name: <youtube_id>_<start:06d>_<end:06d> (seconds, as the CSV writes them)."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def load_kinetics_split(path):
    """returns: (class names sorted, video ids in the file's order, each video's class index).
    A video listed twice counts once (with its first row's label)."""
    text = read_text(path, "download Kinetics-400's annotations (the default) or set "
                           "--data_root", "a CSV file")
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DatasetError(f"{path} is not a CSV ({e})") from e
    if not rows or not set(_COLUMNS) <= set(rows[0]):
        raise DatasetError(f"{path} needs the columns {', '.join(_COLUMNS)} and at least one row "
                           f"(has {list(rows[0]) if rows else 'none'})")
    classes = sorted({row["label"] for row in rows})
    index = {name: i for i, name in enumerate(classes)}
    labels = {}
    for number, row in enumerate(rows, start=2):
        try:
            video = kinetics_video_id(row["youtube_id"], row["time_start"], row["time_end"])
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{path}, line {number}: time_start and time_end must be seconds "
                               f"({e})") from e
        labels.setdefault(video, index[row["label"]])
    return classes, list(labels), [labels[v] for v in labels]


def check_kinetics_file(path):
    """fetch_checked_file's check: the download is a Kinetics annotation CSV."""
    load_kinetics_split(path)


class KineticsDataset(ClassNameQueries, VideoDataset):
    """Kinetics-400's validation clips for zero-shot classification: each class is a query
    made from the prompt templates. labels: [[class index]] per video.
    missing: the video ids with no file in video_root."""

    def __init__(self, preprocess, num_frames, video_root, annotation_file,
                 prompts=CLIP_KINETICS_TEMPLATES, on_error="raise", check_files=True):
        check_prompts(prompts)
        self.class_names, video_ids, classes = load_kinetics_split(annotation_file)
        self.prompts, self.labels = list(prompts), [[c] for c in classes]
        label_of = dict(zip(video_ids, classes))

        def names(video):
            label = self.class_names[label_of[video]]
            return [video, f"{label}/{video}", f"{label.replace(' ', '_')}/{video}"]

        paths, self.missing = locate_videos(video_ids, video_root, names, title="Kinetics-400",
                                            split="val", how_to_get=_GET_VIDEOS,
                                            check_files=check_files)
        self.video_root = video_root
        queries = pd.DataFrame({"video_id": [None] * len(self.class_names),
                                "caption": self.class_names})
        super().__init__(video_ids, paths, queries, preprocess, num_frames, on_error)


def kinetics_accuracy(scores, labels):
    """Top-1 and top-5 accuracy and mean class accuracy, in percent (the module docstring
    gives the rules).

    scores: [C, V] class-video scores (array or tensor); labels: [V] each video's class index.
    returns: {"top1", "top5", "mean_class_accuracy"} as floats, and [C] per-class accuracy
    (NaN for a class with no video).
    """
    scores = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores,
                        dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes, num_videos = scores.shape
    if labels.shape != (num_videos,) or num_videos == 0:
        raise ValueError(f"labels must hold one class per video, shape ({num_videos},), got "
                         f"{labels.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; check the embeddings that produced them")
    by_video = scores.T  # [V, C]
    own = by_video[np.arange(num_videos), labels][:, None]  # [V, 1]
    before = np.arange(num_classes)[None, :] < labels[:, None]  # [V, C]: tied classes first
    ranks = 1 + (by_video > own).sum(1) + ((by_video == own) & before).sum(1)  # [V]
    predictions = by_video.argmax(axis=1)  # the first of tied maxima
    counts = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[predictions == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, 100.0 * hits / counts, np.nan)
    counted = np.union1d(labels, predictions)  # mmaction2's confusion-matrix classes
    mean_class = float(np.mean(np.nan_to_num(per_class[counted], nan=0.0)))
    return {"top1": float(100.0 * np.mean(ranks <= 1)), "top5": float(100.0 * np.mean(ranks <= 5)),
            "mean_class_accuracy": mean_class}, per_class


def build_kinetics(preprocess, num_frames, request):
    """The Kinetics-400 entry's build: see clip_hitchhiker.datasets.DatasetEntry."""
    annotation_file = Path(request.data_root) / KINETICS_FOLDER / "val.csv"
    if request.download:
        fetch_checked_file(request.urls["kinetics400"], annotation_file, check_kinetics_file)
    built = KineticsDataset(preprocess, num_frames, request.video_root, annotation_file,
                            prompts=request.prompts, on_error="report",
                            check_files=request.check_files)
    return built, videos_dataset_id("kinetics400", "val", request.video_root)


def kinetics_missing(data_root, video_root=None):
    """What the suite must fetch before it can run Kinetics-400, or None when it is on disk."""
    annotations = Path(data_root) / KINETICS_FOLDER / "val.csv"
    return (annotations_missing("Kinetics-400", annotations, "kinetics400", data_root)
            or videos_missing("Kinetics-400", video_root, KINETICS_VIDEO_FOLDER, data_root,
                              _GET_VIDEOS))


register(DatasetEntry(
    name="kinetics400", title="Kinetics-400", task="classification", splits=KINETICS_SPLITS,
    queries="each of the 400 classes is a query, its name filled into --prompt templates "
            "(default CLIP's 28 Kinetics templates); one label per video",
    metric="accuracy", build=build_kinetics, folders=(KINETICS_FOLDER,),
    video_folder=KINETICS_VIDEO_FOLDER,
    urls=(UrlOption("kinetics400", KINETICS400_VAL_URL,
                    "where to download Kinetics-400's val.csv"),),
    missing=kinetics_missing, default_prompts=CLIP_KINETICS_TEMPLATES,
    counts={"val": {"queries": 400}}))
