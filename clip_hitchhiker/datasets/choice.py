"""The command-line face of the dataset registry (clip_hitchhiker.datasets): the options that
choose and locate a dataset, their checks, and build_dataset, which builds any registered
dataset's split behind one call. The cache, --skip_bad_videos, torchrun sharding, frame
sampling and preprocessing are the same for all."""
from pathlib import Path

from clip_hitchhiker.datasets import DatasetRequest, get_entry, registry
from clip_hitchhiker.datasets.activitynet import PARAGRAPH_MODES
from clip_hitchhiker.datasets.charades import prompt_template_problem
from clip_hitchhiker.embedding_cache import fingerprint_files


def dataset_names():
    """Every --dataset value, in the registry's order."""
    return tuple(registry())


def default_urls():
    """{key: url} of every registered download (the --<key>_url options' defaults)."""
    return {url.key: url.default for entry in registry().values() for url in entry.urls}


def dataset_folders(dataset, data_root):
    """The folders a dataset's files live in under data_root (inputs that no output may
    overwrite); the CSV's and --video_root's videos are named one by one instead."""
    entry = get_entry(dataset)
    names = list(entry.folders) + ([entry.video_folder] if entry.video_folder else [])
    return [Path(data_root) / name for name in names]


def resolve_video_root(dataset, video_root, data_root):
    """Where a dataset's videos are read from: video_root when given, else the entry's folder
    under data_root when it exists (None otherwise: the dataset names what to pass)."""
    entry = get_entry(dataset)
    if video_root is not None or entry.video_folder is None:
        return video_root
    default = Path(data_root) / entry.video_folder
    return str(default) if default.is_dir() else None


def build_dataset(preprocess, num_frames, *, dataset="msrvtt", split=None, csv=None,
                  video_root=None, data_root="./data", urls=None, prompts=None,
                  paragraph="concat", check_files=True, download=True, decoder="decord",
                  decode_device="cpu"):
    """The named dataset's split (downloaded when missing, where it can be).

    preprocess: the workers' FramePreprocess, or None for raw uint8 frames (device placement).
    urls: {key: url} overriding the registry's downloads; prompts: class-name templates (None:
    the entry's default). decoder, decode_device: read_video's (the cache key names them beside
    the dataset). Items report decode failures instead of raising (the caller decides).
    returns: (dataset, dataset_id: a JSON-able dict that names the videos, for the cache key of
    their embeddings; the texts are encoded afresh by each run).
    """
    if (csv is not None) != (dataset == "csv"):
        raise ValueError(f"csv goes with dataset='csv' and only with it, got dataset={dataset!r} "
                         f"and csv={csv!r}")
    entry = get_entry(dataset)
    if entry.build is None:
        raise ValueError(f"{dataset} is a {entry.task} benchmark: clip_hitchhiker.moments "
                         "builds it")
    request = DatasetRequest(
        split=split or entry.default_split(), data_root=data_root,
        video_root=resolve_video_root(dataset, video_root, data_root), csv=csv,
        urls={**default_urls(), **(urls or {})},
        prompts=tuple(prompts) if prompts else entry.default_prompts, paragraph=paragraph,
        check_files=check_files, download=download)
    built, dataset_id = entry.build(preprocess, num_frames, request)
    built.set_decoder(decoder, decode_device)
    # The videos in order, each one's size and modification time: a replaced or repaired file
    # is re-encoded. (The key holds no text: the texts are encoded afresh by every run.)
    dataset_id["videos_fingerprint"] = fingerprint_files(built.video_paths)
    return built, dataset_id


def count_difference(dataset, split, num_videos, num_queries):
    """A note when a split's counts differ from those of the official files (another release
    of the annotations, or a partial copy), or None. The counts are those the entry declares."""
    expected = get_entry(dataset).counts.get(split, {})
    found = {"videos": num_videos, "queries": num_queries}
    differ = {k: v for k, v in expected.items() if found[k] != v}
    if not differ:
        return None
    said = ", ".join(f"{found[k]:,} {k} (the official files give {v:,})"
                     for k, v in differ.items())
    return f"note: {dataset} {split} lists {said}; results are not comparable with published ones"


def add_dataset_arguments(parser):
    """The command-line options that choose and locate a dataset; each registered download
    gets its --<key>_url."""
    add = parser.add_argument
    entries = registry()
    add("--dataset", default="msrvtt", choices=tuple(entries),
        help="; ".join(f"{name}: {entry.title} ({entry.task})"
                       for name, entry in entries.items()) + " (default msrvtt; csv is implied "
             "by --csv)")
    add("--split", default=None, help="the dataset's split: " + splits_text(entries))
    add("--csv", default=None, help="a CSV (video_path, caption) of your own videos")
    add("--video_root", default=None,
        help="folder of the videos: what --csv paths are relative to (default .), or the videos "
             "of a dataset without a public video host (default: its folder under --data_root, "
             "see docs/datasets.md)")
    add("--data_root", default="./data",
        help="folder holding (or to receive) each dataset's folder (MSRVTT/, Charades/, ...)")
    add("--prompt", action="append", default=None, metavar="TEMPLATE",
        help="charades, kinetics400: a class-name template such as 'a video of a person {}'; "
             "give several to average them (default: charades '{}', kinetics400 CLIP's 28 "
             "Kinetics templates)")
    add("--paragraph", default="concat", choices=PARAGRAPH_MODES,
        help="activitynet, didemo: concat joins a video's sentences into one caption, cut to "
             "the context (default); mean averages the sentences' unit embeddings")
    for entry in entries.values():
        for url in entry.urls:
            add(f"--{url.key}_url", default=url.default, help=url.help)


def splits_text(entries):
    """The splits for --help, datasets with the same splits together: "msvd and lsmdc test;
    activitynet val_1 (default), val_2"."""
    groups = {}
    for name, entry in entries.items():
        if entry.splits:
            groups.setdefault(entry.splits, []).append(name)
    parts = []
    for splits, names in groups.items():
        shown = [f"{splits[0]} (default)", *splits[1:]] if len(splits) > 1 else list(splits)
        who = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        parts.append(f"{who} {', '.join(shown)}")
    return "; ".join(parts)


def check_dataset_arguments(parser, args):
    """Fill in what --csv implies, and refuse options that do not fit the dataset."""
    if args.csv and args.dataset == "msrvtt":
        args.dataset = "csv"  # --csv FILE alone still works
    if args.dataset == "csv" and not args.csv:
        parser.error("--dataset csv needs --csv FILE")
    if args.csv and args.dataset != "csv":
        parser.error(f"--csv is for your own videos; it cannot go with --dataset {args.dataset}")
    entry = get_entry(args.dataset)
    if args.split is not None and args.split not in entry.splits:
        parser.error(f"--split for {args.dataset} must be one of {entry.splits}, got "
                     f"{args.split!r}")
    classifiers = [name for name, e in registry().items() if e.task == "classification"]
    in_suite = getattr(args, "suite", None) is not None  # --prompt goes to its classifiers
    if args.prompt is not None and entry.task != "classification" and not in_suite:
        parser.error(f"--prompt is for --dataset {' or '.join(classifiers)}")
    for prompt in args.prompt or ():
        problem = prompt_template_problem(prompt)
        if problem:
            parser.error(f"--prompt {prompt!r} {problem}")
    if entry.task == "classification" and (args.bootstrap or args.plot):
        parser.error(f"--bootstrap and --plot are for retrieval; {entry.title} reports "
                     f"{entry.metric}")
