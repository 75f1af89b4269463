"""A one-minute offline try-out: a tiny synthetic video set and a tiny CLIP with random weights,
run through the evaluator (mean pooling and query-scoring), the bootstrap, the plot and a search.

    python -m clip_hitchhiker.demo [--out DIR]

It needs no network and no GPU. The model is random, so every figure it prints is meaningless:
it shows the machinery working end to end, not results. It writes into the folder it names first
(a new temporary one unless --out says where), never into the current folder, and prints the
commands it runs as they run where it runs: `python run_msr_retrieval.py` from the checkout's
root, else the installed `run-msr-retrieval`, else `python -m run_msr_retrieval`.

Stages: parse -> build the data and the model -> evaluate (bootstrap, plot) -> search -> say
where the outputs are.
"""
import argparse
import importlib
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from clip_hitchhiker.errors import ConfigError, HitchhikerError

# Written into the output folder, so that a later demo replaces only a folder it made itself.
MARKER = ".hitchhiker-demo"
NUM_FRAMES = 8           # sampled per video by the evaluator
TEMPERATURES = ("0.01", "0.1", "1")
BOOTSTRAP = "1000"
SEARCH_FPS = 5           # the videos last 1.6 s: 8 frames each in the search index
SEARCH_QUERIES = ("a red video", "a blue video")
WARNING = ("The model's weights are random, so every figure {} is meaningless: this demo shows "
           "the machinery working, not results.")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m clip_hitchhiker.demo",
        description="A one-minute offline try-out on synthetic videos and a random tiny CLIP "
                    "(its figures are meaningless: the model is random).")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where the videos, the model and the outputs go, to keep them "
                             "(default: a new temporary folder; a previous demo's folder is "
                             "replaced, any other non-empty folder refused)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Prepare


def claim_output_dir(folder):
    """An empty folder for the demo: a new temporary one when folder is None; a previous demo's
    folder (it holds MARKER) is replaced; any other non-empty folder is refused, since it may
    hold the user's files."""
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="hitchhiker-demo-"))
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"--out {folder} is a file: choose a folder")
        if any(folder.iterdir()):
            if not (folder / MARKER).is_file():
                raise ConfigError(f"--out {folder} is not empty and was not made by the "
                                  "demo: choose another folder")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by python -m clip_hitchhiker.demo\n")
    return folder


def build_data(folder):
    """12 videos of 16 frames (32x32), each with 4 frames of one colour among noise, captioned
    "a <colour> video", and a tiny random CLIP saved as a state dict.
    returns: (captions CSV, video folder, checkpoint path)."""
    from clip_hitchhiker.synthetic_data import build_colour_videos, save_tiny_clip

    try:
        import av  # noqa: F401
    except ImportError as e:
        raise ConfigError("the demo writes its videos with PyAV: pip install av") from e
    video_root = folder / "videos"
    csv = build_colour_videos(video_root, videos_per_colour=1, num_frames=16, relevant=4,
                              name="clips")
    checkpoint = save_tiny_clip(folder / "tiny_random_clip.pt", kind="state_dict")
    return csv, video_root, checkpoint


# ----------------------------------------------------------------------------------------------
# Run


def evaluator_argv(csv, video_root, checkpoint, folder, plot):
    """The evaluator's command line for the demo data (also printed, to be run by hand)."""
    argv = ["--csv", csv, "--video_root", video_root, "--model", checkpoint,
            "--num_frames", str(NUM_FRAMES), "--device", "cpu", "--num_workers", "0",
            "--query_scoring_temp", *TEMPERATURES, "--bootstrap", BOOTSTRAP, "--seed", "0",
            "--output_json", folder / "report.json", "--cache_dir", folder / "cache"]
    if plot:
        argv += ["--plot", folder / "sweep.png"]
    return [str(a) for a in argv]


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_evaluation(argv):
    """run_msr_retrieval's parse_args and main, as the command line runs them.
    returns: the report."""
    import run_msr_retrieval

    return run_msr_retrieval.main(run_msr_retrieval.parse_args(argv))


def search_argvs(video_root, checkpoint, folder):
    """search_videos.py's index and search command lines for the demo data."""
    index = folder / "index"
    index_argv = ["index", video_root, "--index", index, "--model", checkpoint, "--fps",
                  str(SEARCH_FPS), "--device", "cpu", "--num_workers", "0"]
    search_argv = ["search", "--index", index, *SEARCH_QUERIES, "-k", "3", "--thumbnails",
                   folder / "thumbnails"]
    return [str(a) for a in index_argv], [str(a) for a in search_argv]


def command_line(module, argv, cwd=None, which=shutil.which):
    """The shell command that runs `module` (a script of this project, e.g. search_videos) with
    argv here: `python MODULE.py` in the checkout's root (where that file is the module run),
    else its installed console script if it is on PATH for this Python, else `python -m`."""
    imported = Path(importlib.import_module(module).__file__).resolve()
    script = Path(cwd or os.getcwd()) / f"{module}.py"
    if script.is_file() and script.resolve() == imported:
        prefix = [_python(which), f"{module}.py"]
    elif _console_script_of_this_python(which(module.replace("_", "-"))):
        prefix = [module.replace("_", "-")]
    else:
        prefix = [_python(which), "-m", module]
    return shlex.join(prefix + [str(a) for a in argv])


def _python(which):
    """`python` where that is this interpreter, else this interpreter's path."""
    on_path = which("python")
    if on_path and Path(on_path).resolve() == Path(sys.executable).resolve():
        return "python"
    return sys.executable


def _console_script_of_this_python(path):
    """True if path is a console script that pip installed for this interpreter."""
    if path is None:
        return False
    try:
        with open(path, "rb") as f:
            first_line = f.readline(4096).decode(errors="replace").strip()
    except OSError:
        return False
    return first_line.startswith("#!") and \
        Path(first_line[2:].split()[0]).resolve() == Path(sys.executable).resolve()


def run_search(index_argv, search_argv):
    """Index the videos, then search them, as search_videos.py's command line does."""
    import search_videos

    search_videos.main(search_videos.parse_args(index_argv))
    search_videos.main(search_videos.parse_args(search_argv))


def main(args):
    """returns: {name: path} of the outputs."""
    started = time.perf_counter()
    print(WARNING.format("below"))
    folder = claim_output_dir(args.out).resolve()
    kept = "" if args.out else " (a temporary folder; --out DIR writes where you choose)"
    print(f"\n[1/4] building 12 synthetic videos and a tiny random CLIP in {folder}{kept} ...")
    csv, video_root, checkpoint = build_data(folder)
    plot = has_matplotlib()
    argv = evaluator_argv(csv, video_root, checkpoint, folder, plot)
    print("\n[2/4] the evaluator, the bootstrap" + (" and the plot" if plot else "") + ":\n"
          + command_line("run_msr_retrieval", argv))
    run_evaluation(argv)
    if not plot:
        print("(no plot: matplotlib is not installed; pip install matplotlib)")
    index_argv, search_argv = search_argvs(video_root, checkpoint, folder)
    print("\n[3/4] a search index of the videos, and a search:\n"
          + "\n".join(command_line("search_videos", a) for a in (index_argv, search_argv)))
    run_search(index_argv, search_argv)
    outputs = {"videos and captions": csv, "model (random weights)": checkpoint,
               "report": folder / "report.json"}
    if plot:
        outputs["plot"] = folder / "sweep.png"
    outputs["search index"] = folder / "index"
    outputs["hits' peak frames"] = folder / "thumbnails"
    print(f"\n[4/4] done in {time.perf_counter() - started:.0f} s. The outputs:")
    for name, path in outputs.items():
        print(f"  {name + ':':25} {path}")
    print(WARNING.format("above"))
    return outputs


def cli(argv=None):
    """The project's errors become one line on stderr and exit code 1."""
    from clip_hitchhiker.reporting import silence_third_party_notices

    silence_third_party_notices()
    args = parse_args(argv)
    try:
        main(args)
    except HitchhikerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
