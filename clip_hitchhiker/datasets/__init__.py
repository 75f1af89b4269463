"""The benchmarks a run can evaluate, each declared once in a registry that `--dataset` and
`--suite` read: its task, splits, annotation files and where its videos come from, how its
queries map to videos, its metric and the published figures to print beside it.

One module per dataset (msvd, didemo, lsmdc, vatex, kinetics, charades, charades_sta,
activitynet), each registering its entry when imported; MSR-VTT, the CSV datasets, frame
sampling and decoding stay in `data_loader.py` (the design card's module), which registers
`msrvtt` and `csv` from there. `moment_data` holds the moment benchmarks' shared videos and
`choice` the command-line options. These modules may import `data_loader`,
`clip_hitchhiker.downloads`, `embedding_cache` and `errors`; nothing here imports a script,
the models or the search. This file imports none of them until the registry is first read, so
that `data_loader` can register from itself.
"""
import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional

TASKS = ("retrieval", "classification", "moments")
# How a video ranks the texts (v2t): "captions": its best-ranked own caption among all captions
# (this package's MSR-VTT figures); "caption_groups": each video's caption set scored by its best
# caption, as CLIP4Clip's and Portillo-Quintero's multi-sentence evaluation does
# (metrics.tensor_video_to_text_sim in ArrowLuo/CLIP4Clip).
V2T_PROTOCOLS = ("captions", "caption_groups")
# The median of the t2v ranks: "average" (numpy's, of the two middle ranks) or "lower" (torch's
# median, which CLIP4Clip's tensor_text_to_video_metrics takes for multi-sentence datasets).
MEDIANS = ("average", "lower")
# Imported, in this order, the first time the registry is read: each registers its entries.
_BUILTIN_MODULES = ("data_loader", "clip_hitchhiker.datasets.msvd",
                    "clip_hitchhiker.datasets.didemo", "clip_hitchhiker.datasets.lsmdc",
                    "clip_hitchhiker.datasets.vatex", "clip_hitchhiker.datasets.activitynet",
                    "clip_hitchhiker.datasets.charades", "clip_hitchhiker.datasets.kinetics",
                    "clip_hitchhiker.datasets.charades_sta")


@dataclass(frozen=True)
class Reference:
    """A published figure, printed beside the rows of this package's run that it applies to.

    aggregation: "mean-pooling" or "query-scoring"; temperature: the query-scoring τ it was
    made with, or None (any, or not stated); metrics: {"R1": 31.2, ...} as published."""
    source: str
    model: str
    frames: str
    aggregation: str
    metrics: dict
    temperature: Optional[float] = None
    split: Optional[str] = None

    def applies_to(self, split, aggregation, temperature):
        """Whether a row (split, aggregation, τ or None) reports what this figure reports."""
        return ((self.split is None or self.split == split) and aggregation == self.aggregation
                and (self.temperature is None or self.temperature == temperature))


@dataclass(frozen=True)
class UrlOption:
    """A download location the command line can override (--<key>_url)."""
    key: str
    default: str
    help: str


@dataclass(frozen=True)
class DatasetRequest:
    """What a build function needs, whatever the dataset: split (None: the default), where the
    data lives, the CSV (csv only), {key: url} for the entry's UrlOptions, the class-name prompt
    templates (None: the entry's default), the paragraph mode, whether missing videos stop the
    run (check_files) and whether to download what is missing."""
    split: Optional[str] = None
    data_root: str = "./data"
    video_root: Optional[str] = None
    csv: Optional[str] = None
    urls: dict = field(default_factory=dict)
    prompts: Optional[tuple] = None
    paragraph: str = "concat"
    check_files: bool = True
    download: bool = True


@dataclass(frozen=True)
class DatasetEntry:
    """A benchmark's protocol, declared once.

    task: "retrieval" (text-to-video and video-to-text R@K), "classification" (class-name
        prompts score each video) or "moments" (clip_hitchhiker.moments);
    splits: the splits, the default first; queries: how queries map to videos, in words;
    metric: "recall", "mAP", "accuracy" or "moments"; v2t, t2v_median: see V2T_PROTOCOLS and
    MEDIANS; build(preprocess, num_frames, request) -> (dataset, dataset_id) (None for moments,
    which clip_hitchhiker.moments builds); folders: the folders under data_root that hold its
    files (inputs no output may overwrite); video_folder: under data_root, where its videos are
    looked for when no --video_root is given (None: they come with the download); urls: its
    downloads; missing(data_root, video_root) -> what is not on disk (a line that says what to
    fetch and where to put it) or None; references: published figures; counts: {split:
    {"videos": n, "queries": m}} as the official files give them; in_suite: run by --suite.
    """
    name: str
    title: str
    task: str
    splits: tuple
    queries: str
    metric: str
    build: Optional[Callable] = None
    folders: tuple = ()
    video_folder: Optional[str] = None
    urls: tuple = ()
    missing: Optional[Callable] = None
    references: tuple = ()
    counts: dict = field(default_factory=dict)
    v2t: str = "captions"
    t2v_median: str = "average"
    in_suite: bool = True
    default_prompts: tuple = ("{}",)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"{self.name}: task must be one of {TASKS}, got {self.task!r}")
        if self.v2t not in V2T_PROTOCOLS:
            raise ValueError(f"{self.name}: v2t must be one of {V2T_PROTOCOLS}, got {self.v2t!r}")
        if self.t2v_median not in MEDIANS:
            raise ValueError(f"{self.name}: t2v_median must be one of {MEDIANS}, got "
                             f"{self.t2v_median!r}")

    def default_split(self):
        return self.splits[0] if self.splits else None


_REGISTRY = {}


def register(entry):
    """Add entry under entry.name (refusing another entry of that name). returns: entry."""
    known = _REGISTRY.get(entry.name)
    if known is not None and known != entry:
        raise ValueError(f"a dataset named {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def registry():
    """Every registered dataset, {name: DatasetEntry}, the built-in ones first in their order."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    builtin = [n for n in _REGISTRY if n in _BUILTIN_ORDER]
    builtin.sort(key=_BUILTIN_ORDER.index)
    return {name: _REGISTRY[name] for name in builtin + [n for n in _REGISTRY
                                                          if n not in _BUILTIN_ORDER]}


def get_entry(name):
    """The registered dataset called name (ValueError naming the known ones otherwise)."""
    entries = registry()
    if name not in entries:
        raise ValueError(f"dataset must be one of {tuple(entries)}, got {name!r}")
    return entries[name]


def suite_names():
    """The datasets --suite runs, in the table's order."""
    return tuple(name for name, entry in registry().items() if entry.in_suite)


_BUILTIN_ORDER = ("msrvtt", "msvd", "didemo", "lsmdc", "vatex", "activitynet", "charades",
                  "kinetics400", "csv", "charades_sta")
