"""The datasets a run can evaluate, behind one call: MSR-VTT, Charades, ActivityNet Captions
and the user's CSV. Each declares its videos, its queries and its task (retrieval, or
classification for Charades); the cache, --skip_bad_videos, torchrun sharding, frame sampling
and preprocessing are the same for all."""
from pathlib import Path

import data_loader
from clip_hitchhiker.datasets.activitynet import (ACTIVITYNET_CAPTIONS_URL, ACTIVITYNET_SPLITS,
                                         PARAGRAPH_MODES, ActivityNetCaptionsDataset)
from clip_hitchhiker.datasets.charades import (CHARADES_ANNOTATIONS_URL, CHARADES_SPLITS,
                                      CHARADES_VIDEOS_URL, CharadesDataset,
                                      prompt_template_problem)
from clip_hitchhiker.embedding_cache import fingerprint_files

DATASETS = ("msrvtt", "charades", "activitynet", "csv", "charades_sta")
SPLITS = {"msrvtt": data_loader.SPLITS, "charades": CHARADES_SPLITS,
          "activitynet": ACTIVITYNET_SPLITS, "csv": (), "charades_sta": ("test",)}
DEFAULT_URLS = {"msrvtt": data_loader.MSRVTT_URL, "charades": CHARADES_VIDEOS_URL,
                "charades_annotations": CHARADES_ANNOTATIONS_URL,
                "activitynet": ACTIVITYNET_CAPTIONS_URL}


def dataset_folders(dataset, data_root):
    """The folders a dataset's files live in under data_root (inputs that no output may
    overwrite); the CSV's and ActivityNet's videos are named one by one instead."""
    names = {"msrvtt": ["MSRVTT"], "charades": ["Charades", "Charades_v1_480"],
             "activitynet": ["ActivityNetCaptions"], "csv": [],
             "charades_sta": ["Charades-STA", "Charades_v1_480"]}[dataset]
    return [Path(data_root) / name for name in names]


def build_dataset(preprocess, num_frames, *, dataset="msrvtt", split=None, csv=None,
                  video_root=None, data_root="./data", urls=None, prompts=("{}",),
                  paragraph="concat", check_files=True, download=True, decoder="decord",
                  decode_device="cpu"):
    """The named dataset's split (downloaded when missing, where it can be).

    preprocess: the workers' FramePreprocess, or None for raw uint8 frames (device placement).
    urls: {name: url} overriding DEFAULT_URLS. decoder, decode_device: read_video's (the cache
    key names them beside the dataset). Items report decode failures instead of raising (the
    caller decides). returns: (dataset, dataset_id: a JSON-able dict that names the videos, for
    the cache key of their embeddings; the texts are encoded afresh by each run).
    """
    if (csv is not None) != (dataset == "csv"):
        raise ValueError(f"csv goes with dataset='csv' and only with it, got dataset={dataset!r} "
                         f"and csv={csv!r}")
    urls = {**DEFAULT_URLS, **(urls or {})}
    split = split or (SPLITS[dataset][0] if SPLITS[dataset] else None)
    common = dict(on_error="report")
    if dataset == "csv":
        video_root = video_root or "."
        built = data_loader.CSVDataset(csv, video_root, preprocess, num_frames,
                                       check_files=check_files, **common)
        dataset_id = {"dataset": "csv", "video_root": str(Path(video_root).resolve())}
    elif dataset == "msrvtt":
        built = data_loader.MSRVTTDataset(preprocess, num_frames, split=split,
                                          data_root=data_root, download=download,
                                          url=urls["msrvtt"], progress=download, **common)
        dataset_id = {"dataset": "msrvtt"}  # 1k-A and miech share their videos (the fingerprint)
    elif dataset == "charades":
        built = CharadesDataset(preprocess, num_frames, split=split, data_root=data_root,
                                prompts=prompts, download=download,
                                annotations_url=urls["charades_annotations"],
                                videos_url=urls["charades"], progress=download, **common)
        dataset_id = {"dataset": "charades", "split": split}
    elif dataset == "activitynet":
        built = ActivityNetCaptionsDataset(preprocess, num_frames, video_root, split=split,
                                           data_root=data_root, paragraph=paragraph,
                                           download=download, url=urls["activitynet"],
                                           check_files=check_files, progress=download, **common)
        dataset_id = {"dataset": "activitynet", "split": split,
                      "video_root": str(Path(video_root).resolve())}
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    built.set_decoder(decoder, decode_device)
    # The videos in order, each one's size and modification time: a replaced or repaired file
    # is re-encoded. (The key holds no text: the texts are encoded afresh by every run.)
    dataset_id["videos_fingerprint"] = fingerprint_files(built.video_paths)
    return built, dataset_id


def add_dataset_arguments(parser):
    """The command-line options that choose and locate a dataset."""
    add = parser.add_argument
    add("--dataset", default="msrvtt", choices=DATASETS,
        help="msrvtt (default), charades (zero-shot classification, mAP), activitynet "
             "(paragraph-to-video retrieval, or --task moments; videos from --video_root), "
             "csv (your own; implied by --csv), charades_sta (moment localisation)")
    add("--split", default=None,
        help="the dataset's split: msrvtt jsfusion (1k-A, the default), miech, full-test; "
             "charades and charades_sta test; activitynet val_1 (default), val_2")
    add("--csv", default=None, help="a CSV (video_path, caption) of your own videos")
    add("--video_root", default=None,
        help="folder of the videos: what --csv paths are relative to (default .), or the "
             "ActivityNet videos (v_<id>.mp4/.mkv/.webm)")
    add("--data_root", default="./data",
        help="folder holding (or to receive) MSRVTT/, Charades/, ActivityNetCaptions/")
    add("--prompt", action="append", default=None, metavar="TEMPLATE",
        help="charades: a class-name template such as 'a video of a person {}'; give several "
             "to average them (default '{}')")
    add("--paragraph", default="concat", choices=PARAGRAPH_MODES,
        help="activitynet: concat joins a video's sentences into one caption, cut to the "
             "context (default); mean averages the sentences' unit embeddings")
    add("--msrvtt_url", default=DEFAULT_URLS["msrvtt"], help="where to download MSRVTT.zip")
    add("--charades_url", default=DEFAULT_URLS["charades"],
        help="where to download the Charades 480p video zip")
    add("--charades_annotations_url", default=DEFAULT_URLS["charades_annotations"],
        help="where to download the Charades annotation zip")
    add("--activitynet_url", default=DEFAULT_URLS["activitynet"],
        help="where to download the ActivityNet Captions annotation zip")


def check_dataset_arguments(parser, args):
    """Fill in what --csv implies, and refuse options that do not fit the dataset."""
    if args.csv and args.dataset == "msrvtt":
        args.dataset = "csv"  # --csv FILE alone still works
    if args.dataset == "csv" and not args.csv:
        parser.error("--dataset csv needs --csv FILE")
    if args.csv and args.dataset != "csv":
        parser.error(f"--csv is for your own videos; it cannot go with --dataset {args.dataset}")
    if args.split is not None and args.split not in SPLITS[args.dataset]:
        parser.error(f"--split for {args.dataset} must be one of {SPLITS[args.dataset]}, got "
                     f"{args.split!r}")
    if args.prompt is not None and args.dataset != "charades":
        parser.error("--prompt is for --dataset charades")
    for prompt in args.prompt or ():
        problem = prompt_template_problem(prompt)
        if problem:
            parser.error(f"--prompt {prompt!r} {problem}")
    if args.dataset == "charades" and (args.bootstrap or args.plot):
        parser.error("--bootstrap and --plot are for retrieval; Charades reports mAP")
