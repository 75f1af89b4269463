"""Charades (Sigurdsson et al., ECCV 2016) for zero-shot action recognition: 157 classes, the
test split's 1,863 videos, scored by Charades' official mAP.

Layout of AI2's two zips, extracted under data_root:
    Charades/Charades_v1_test.csv       id, ..., actions ("c092 11.90 21.20;c147 0.00 12.60")
    Charades/Charades_v1_classes.txt    "c000 Holding some clothes", one class a line
    Charades_v1_480/<id>.mp4            the 480p videos
"""
import csv
import string
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from clip_hitchhiker.datasets import DatasetEntry, Reference, UrlOption, register
from clip_hitchhiker.downloads import COMPLETE_MARKER, fetch_and_extract
from clip_hitchhiker.errors import DatasetError
from data_loader import VideoDataset

_AI2 = "https://ai2-public-datasets.s3-us-west-2.amazonaws.com/charades"
CHARADES_ANNOTATIONS_URL = f"{_AI2}/Charades.zip"
CHARADES_VIDEOS_URL = f"{_AI2}/Charades_v1_480.zip"
CHARADES_SPLITS = ("test",)
_SPLIT_FILES = {"test": "Charades_v1_test.csv"}


def download_charades(data_root="./data", annotations_url=CHARADES_ANNOTATIONS_URL,
                      videos_url=CHARADES_VIDEOS_URL, progress=True):
    """The annotations and the 480p videos under data_root, as safely as MSR-VTT's."""
    fetch_and_extract(annotations_url, data_root, "Charades.zip", "Charades", progress=progress)
    fetch_and_extract(videos_url, data_root, "Charades_v1_480.zip", "Charades_v1_480",
                      progress=progress)


def prompt_template_problem(template):
    """Why template cannot be filled with a class name, or None: it must hold exactly one
    empty field "{}" (write a literal brace as "{{" or "}}")."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion
                  in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # a single "{" or "}"
        return f"has a stray brace ({e}); write a literal brace as {{{{ or }}}}"
    if fields != [("", "", None)]:
        return (f"must hold exactly one {{}} for the class name (no index, name or format), has "
                f"{len(fields)} replacement field(s); write a literal brace as {{{{ or }}}}")
    return None


def load_charades_classes(path):
    """returns: (class ids ["c000", ...], class names ["Holding some clothes", ...])."""
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError as e:
        raise DatasetError(f"missing {path}; download Charades (the default) or set "
                           "--data_root to the folder that holds Charades/") from e
    if not lines:
        raise DatasetError(f"the class file {path} is empty; delete the Charades folder and "
                           "download it again (or restore the file)")
    pairs = [line.split(" ", 1) for line in lines]
    if any(len(pair) != 2 or not pair[0].startswith("c") for pair in pairs):
        raise DatasetError(f"{path} should hold lines like 'c000 Holding some clothes'")
    return [c for c, _ in pairs], [name for _, name in pairs]


def load_charades_split(path, class_ids):
    """returns: (video ids in the file's order, [[class index, ...] per video]; [] for a video
    with no action). A video listed twice counts once (its first row), with a warning."""
    index = {c: i for i, c in enumerate(class_ids)}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as e:
        raise DatasetError(f"missing {path}; the Charades folder is incomplete") from e
    if not rows:
        raise DatasetError(f"{path} lists no video: the split is empty; delete the Charades "
                           "folder and download it again (or restore the file)")
    if not {"id", "actions"} <= set(rows[0]):
        raise DatasetError(f"{path} needs the columns id and actions, has {list(rows[0])}")
    video_ids, labels, repeated, seen = [], [], [], set()
    for row in rows:
        if row["id"] in seen:
            repeated.append(row["id"])
            continue
        seen.add(row["id"])
        actions = [a.split()[0] for a in (row["actions"] or "").split(";") if a.strip()]
        unknown = [a for a in actions if a not in index]
        if unknown:
            raise DatasetError(f"{path}: video {row['id']} has unknown classes {unknown}")
        video_ids.append(row["id"])
        labels.append(sorted({index[a] for a in actions}))
    if repeated:
        warnings.warn(f"{path}: {len(repeated)} row(s) repeat a video already listed (e.g. "
                      f"{repeated[:3]}); each video counts once, with its first row's actions",
                      stacklevel=2)
    return video_ids, labels


def check_prompts(prompts):
    """ValueError unless prompts holds templates that each take one class name."""
    if not prompts:
        raise ValueError("prompts must hold at least one template")
    for prompt in prompts:
        problem = prompt_template_problem(prompt)
        if problem:
            raise ValueError(f"prompt {prompt!r} {problem}")


class ClassNameQueries:
    """The texts of classification queries (a mixin before VideoDataset): each of
    self.class_names filled into every template of self.prompts; a class's query is the mean
    of its prompts' unit embeddings (CLIP's prompt ensembling)."""

    task = "classification"

    def text_rows(self):
        texts = [p.format(name) for name in self.class_names for p in self.prompts]
        classes = [c for c in range(len(self.class_names)) for _ in self.prompts]
        return texts, classes


class CharadesDataset(ClassNameQueries, VideoDataset):
    """Charades test videos for classification: each class is a text query, made from the
    prompt templates ("{}" is replaced by the class name; several templates are averaged)."""

    def __init__(self, preprocess, num_frames, split="test", data_root="./data",
                 prompts=("{}",), download=True, annotations_url=CHARADES_ANNOTATIONS_URL,
                 videos_url=CHARADES_VIDEOS_URL, on_error="raise", progress=True):
        if split not in CHARADES_SPLITS:
            raise ValueError(f"Charades split must be one of {CHARADES_SPLITS}, got {split!r}")
        check_prompts(prompts)
        if download:
            download_charades(data_root, annotations_url, videos_url, progress)
        root = Path(data_root)
        self.class_ids, self.class_names = load_charades_classes(
            root / "Charades" / "Charades_v1_classes.txt")
        video_ids, self.labels = load_charades_split(root / "Charades" / _SPLIT_FILES[split],
                                                     self.class_ids)
        self.prompts = list(prompts)
        queries = pd.DataFrame({"video_id": [None] * len(self.class_names),
                                "caption": self.class_names})
        super().__init__(video_ids, [root / "Charades_v1_480" / f"{v}.mp4" for v in video_ids],
                         queries, preprocess, num_frames, on_error)


def charades_map(scores, labels):
    """Charades' official mAP, as Charades_v1_classify.m (in AI2's Charades.zip) computes it.

    scores: [C, V] class-video scores (array or tensor); labels: [V, C] bool. For each class
    with a positive video: videos sorted by score, descending (ties in video order); AP is the
    mean over the positives of the precision at each positive's rank.

    Videos with no label at all are not ranked. The official script fills its score matrix with
    -inf (`test = -inf(ntest,nclasses)`) and overwrites only the rows of videos that carry
    actions (its load_charades leaves an unlabelled video's id empty, so `predictions.isKey`
    never finds it); the authors' Python port (gsig/charades-algorithms,
    pytorch/utils/map.py, charades_map: `fix[empty, :] = np.NINF`) does the same. Ranked at
    -inf, below every positive, such a video changes no precision: leaving it out is the same.
    returns: (mAP in percent over the classes with a positive, [C] AP in percent, NaN for
    classes with no positive).
    """
    scores = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores,
                        dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.T.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} do not fit: need "
                         "[C, V] and [V, C]")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; check the embeddings that produced them")
    labelled = labels.any(axis=1)  # [V]
    scores, labels = scores[:, labelled], labels[labelled]
    order = np.argsort(-scores, axis=1, kind="stable")  # [C, V']
    hits = np.take_along_axis(labels.T, order, axis=1)  # [C, V']: positives in ranked order
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    positives = hits.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = 100.0 * (precision * hits).sum(axis=1) / positives
    ap[positives == 0] = np.nan
    if np.isnan(ap).all():
        raise ValueError("no class has a positive video: mAP is undefined")
    return float(np.nanmean(ap)), ap


# ----------------------------------------------------------------------------------------------
# Registry entry


def build_charades(preprocess, num_frames, request):
    """The Charades entry's build: see clip_hitchhiker.datasets.DatasetEntry."""
    split = request.split or CHARADES_SPLITS[0]
    built = CharadesDataset(preprocess, num_frames, split=split, data_root=request.data_root,
                            prompts=request.prompts, download=request.download,
                            annotations_url=request.urls["charades_annotations"],
                            videos_url=request.urls["charades"], on_error="report",
                            progress=request.download)
    return built, {"dataset": "charades", "split": split}


def charades_missing(data_root, video_root=None):
    """What the suite must fetch before it can run Charades, or None when it is on disk."""
    folders = [Path(data_root) / name for name in ("Charades", "Charades_v1_480")]
    absent = [str(f) for f in folders if not (f / COMPLETE_MARKER).is_file()]
    if not absent:
        return None
    return (f"Charades is not complete in {', '.join(absent)}: run `python run_msr_retrieval.py "
            f"--dataset charades --data_root {data_root}` once to download it")


register(DatasetEntry(
    name="charades", title="Charades", task="classification", splits=CHARADES_SPLITS,
    queries="each of the 157 classes is a query, its name filled into --prompt templates; a "
            "video's labels are the classes in its actions field", metric="mAP",
    build=build_charades, folders=("Charades", "Charades_v1_480"),
    urls=(UrlOption("charades", CHARADES_VIDEOS_URL,
                    "where to download the Charades 480p video zip"),
          UrlOption("charades_annotations", CHARADES_ANNOTATIONS_URL,
                    "where to download the Charades annotation zip")),
    missing=charades_missing,
    references=(Reference("Bain et al. 2022 (arXiv 2205.08508)", "ViT-B/16", "32",
                          "query-scoring", {"mAP": 21.1}),),
    counts={"test": {"videos": 1863, "queries": 157}}))
