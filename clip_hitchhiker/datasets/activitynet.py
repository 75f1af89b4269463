"""ActivityNet Captions (Krishna et al., ICCV 2017) for paragraph-to-video retrieval: each video
of the split is one query, the paragraph of its sentences in timestamp order.

The captions come from the public annotation zip (val_1.json: video id -> duration, timestamps,
sentences). The videos have no stable public host: pass --video_root, a folder of
v_<id>.mp4 / .mkv / .webm files.
"""
import os
from pathlib import Path

import pandas as pd

from clip_hitchhiker.datasets import DatasetEntry, UrlOption, register
from clip_hitchhiker.datasets.local_files import read_json, videos_dataset_id, videos_missing
from clip_hitchhiker.downloads import COMPLETE_MARKER, fetch_and_extract
from clip_hitchhiker.errors import DatasetError
from data_loader import VideoDataset

ACTIVITYNET_CAPTIONS_URL = "https://cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip"
ACTIVITYNET_SPLITS = ("val_1", "val_2")
PARAGRAPH_MODES = ("concat", "mean")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")


def download_activitynet_captions(data_root="./data", url=ACTIVITYNET_CAPTIONS_URL,
                                  progress=True):
    """The caption annotations under data_root/ActivityNetCaptions (the zip has no single top
    folder). returns: that folder."""
    return fetch_and_extract(url, data_root, "activitynet_captions.zip", None,
                             target_name="ActivityNetCaptions", progress=progress)


def load_paragraphs(path):
    """returns: {video id: [sentences in timestamp order]}, in the file's order."""
    return {video_id: paragraph_sentences(path, video_id, entry)
            for video_id, entry in read_annotations(path).items()}


def read_annotations(path):
    """A split's annotation file (val_1.json...), checked: a non-empty JSON object.
    returns: {video id: entry}, entries unchecked (see entry_sentences)."""
    annotations = read_json(path, "download the ActivityNet Captions annotations (the default) "
                                  "or set --data_root")
    if not isinstance(annotations, dict):
        raise DatasetError(f"{path} should map each video id to its timestamps and sentences "
                           f"(a JSON object), got a {type(annotations).__name__}; is it the "
                           "ActivityNet Captions file?")
    if not annotations:
        raise DatasetError(f"{path} lists no video: the split is empty; delete "
                           f"{Path(path).parent} and download it again (or restore the file)")
    return annotations


def entry_sentences(path, video_id, entry):
    """One video's timestamps and sentences as written, checked: lists of the same length
    (zip would silently drop the extra ones), at least one, every sentence non-empty text.
    Sentences are numbered from 1 in messages. returns: (timestamps, sentences)."""
    try:
        timestamps, sentences = entry["timestamps"], entry["sentences"]
    except (KeyError, TypeError) as e:
        raise DatasetError(f"{path}: video {video_id} lacks timestamps and sentences") from e
    if not isinstance(sentences, list) or not isinstance(timestamps, list):
        raise DatasetError(f"{path}: video {video_id}: timestamps and sentences must be lists")
    if len(sentences) != len(timestamps):
        raise DatasetError(f"{path}: video {video_id} has {len(sentences)} sentence(s) but "
                           f"{len(timestamps)} timestamp(s); each sentence needs its own")
    if not sentences:
        raise DatasetError(f"{path}: video {video_id} has no sentence")
    for number, sentence in enumerate(sentences, start=1):
        if not isinstance(sentence, str) or not sentence.strip():
            raise DatasetError(f"{path}: video {video_id}, sentence {number} is {sentence!r}; "
                               "every sentence must be non-empty text")
    return timestamps, sentences


def paragraph_sentences(path, video_id, entry):
    """One video's sentences (checked by entry_sentences) in timestamp order."""
    timestamps, sentences = entry_sentences(path, video_id, entry)
    try:
        pairs = sorted(zip(timestamps, sentences), key=lambda pair: tuple(pair[0]))
    except TypeError as e:
        raise DatasetError(f"{path}: video {video_id} has timestamps that are not [start, end] "
                           f"pairs ({e})") from e
    return [sentence.strip() for _, sentence in pairs]


def find_video(video_root, video_id):
    """The file of video_id in video_root (v_<id> or <id>, .mp4/.mkv/.webm), or None."""
    stem = video_id if video_id.startswith("v_") else f"v_{video_id}"
    for name in (stem, stem[2:]):
        for extension in VIDEO_EXTENSIONS:
            path = os.path.join(video_root, name + extension)
            if os.path.isfile(path):
                return path
    return None


class ParagraphQueries:
    """The texts of paragraph queries (a mixin before VideoDataset): self.paragraphs maps each
    video id to its sentences, in order; self.paragraph "concat" encodes the queries' captions
    (the sentences joined), "mean" each sentence, averaged per query by the encoder."""

    def text_rows(self):
        if self.paragraph == "concat":
            return super().text_rows()
        texts, queries = [], []
        for query, video_id in enumerate(self.video_ids):
            texts += self.paragraphs[video_id]
            queries += [query] * len(self.paragraphs[video_id])
        return texts, queries


class ActivityNetCaptionsDataset(ParagraphQueries, VideoDataset):
    """Paragraph-to-video retrieval on a split of ActivityNet Captions.

    paragraph: "concat" joins the sentences into one caption (cut to the text encoder's
    context, as CLIP4Clip and most CLIP-based work do); "mean" averages the unit embeddings of
    the sentences. check_files: stop, naming the first missing videos, if any is missing.
    missing: the video ids of the split with no file in video_root.
    """

    def __init__(self, preprocess, num_frames, video_root, split="val_1", data_root="./data",
                 paragraph="concat", download=True, url=ACTIVITYNET_CAPTIONS_URL,
                 on_error="raise", check_files=True, progress=True):
        if split not in ACTIVITYNET_SPLITS:
            raise ValueError(f"ActivityNet split must be one of {ACTIVITYNET_SPLITS}, got "
                             f"{split!r}")
        if paragraph not in PARAGRAPH_MODES:
            raise ValueError(f"paragraph must be one of {PARAGRAPH_MODES}, got {paragraph!r}")
        if video_root is None or not os.path.isdir(video_root):
            raise DatasetError(f"ActivityNet videos are not downloadable from a stable host: "
                               f"pass --video_root, a folder of v_<id>.mp4/.mkv/.webm files "
                               f"(got {video_root!r})")
        if download:
            download_activitynet_captions(data_root, url, progress)
        self.paragraphs = load_paragraphs(Path(data_root) / "ActivityNetCaptions" /
                                          f"{split}.json")
        self.paragraph, self.video_root = paragraph, video_root
        video_ids = list(self.paragraphs)
        paths = [find_video(video_root, v) for v in video_ids]
        self.missing = [v for v, p in zip(video_ids, paths) if p is None]
        if check_files and self.missing:
            raise DatasetError(f"{len(self.missing)} of {len(video_ids)} videos of {split} are "
                               f"missing from {video_root}, e.g. {self.missing[:5]}; add them, "
                               "or pass --skip_bad_videos to leave them out")
        paths = [p or os.path.join(video_root, f"{v}.mp4") for v, p in zip(video_ids, paths)]
        queries = pd.DataFrame({"video_id": video_ids,
                                "caption": [" ".join(self.paragraphs[v]) for v in video_ids]})
        super().__init__(video_ids, paths, queries, preprocess, num_frames, on_error)


# ----------------------------------------------------------------------------------------------
# Registry entry


def build_activitynet(preprocess, num_frames, request):
    """The ActivityNet Captions entry's build: see clip_hitchhiker.datasets.DatasetEntry."""
    split = request.split or ACTIVITYNET_SPLITS[0]
    built = ActivityNetCaptionsDataset(
        preprocess, num_frames, request.video_root, split=split, data_root=request.data_root,
        paragraph=request.paragraph, download=request.download, url=request.urls["activitynet"],
        check_files=request.check_files, on_error="report", progress=request.download)
    return built, videos_dataset_id("activitynet", split, request.video_root)


def activitynet_missing(data_root, video_root=None):
    """What the suite must fetch before it can run ActivityNet Captions, or None."""
    if not (Path(data_root) / "ActivityNetCaptions" / COMPLETE_MARKER).is_file():
        return (f"the ActivityNet Captions annotations are not in {data_root}: run `python "
                f"run_msr_retrieval.py --dataset activitynet --data_root {data_root} "
                "--video_root VIDEOS` once to download them")
    return videos_missing("ActivityNet", video_root, ACTIVITYNET_VIDEO_FOLDER, data_root,
                          "fetch them from the ActivityNet challenge's request form "
                          "(activity-net.org/download.html) as v_<id>.mp4/.mkv/.webm")


ACTIVITYNET_VIDEO_FOLDER = "ActivityNet/videos"

register(DatasetEntry(
    name="activitynet", title="ActivityNet Captions", task="retrieval",
    splits=ACTIVITYNET_SPLITS,
    queries="paragraph-to-video: each video is one query, its sentences in timestamp order "
            "(--paragraph concat or mean)", metric="recall", build=build_activitynet,
    folders=("ActivityNetCaptions",), video_folder=ACTIVITYNET_VIDEO_FOLDER,
    urls=(UrlOption("activitynet", ACTIVITYNET_CAPTIONS_URL,
                    "where to download the ActivityNet Captions annotation zip"),),
    missing=activitynet_missing, counts={"val_1": {"videos": 4917, "queries": 4917}}))
