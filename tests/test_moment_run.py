"""Moment localisation end to end: the loaders on files in the real formats (malformed lines
named), the annotation download from 127.0.0.1, and the evaluator on synthetic videos with
known moments, whose printed metrics equal a recomputation from --save_embeddings."""
import ast
import json
import math

import numpy as np
import pytest
import torch

import run_msr_retrieval as evaluator
from clip_hitchhiker.datasets.activitynet import load_paragraphs
from clip_hitchhiker.datasets.charades_sta import charades_sta_annotation_file, load_charades_sta
from clip_hitchhiker.downloads import COMPLETE_MARKER
from clip_hitchhiker import embedding_cache
from clip_hitchhiker.datasets import moment_data
from clip_hitchhiker.moments import run as moment_run
from clip_hitchhiker.errors import ConfigError, DatasetError, OutputError
from clip_hitchhiker.datasets.moment_data import load_activitynet_moments
from clip_hitchhiker.moments.rule import frame_cells, moment_from_weights
from query_scoring import similarity_meanpooling
from tests import synthetic

RED = (230, 30, 30)


def write_moment_video(path, num_frames, moment_frames, seed, fps=10, size=32):
    """Noise frames, except frames moment_frames[0] <= i < moment_frames[1], which are red."""
    synthetic.write_noise_video(path, num_frames, dict.fromkeys(range(*moment_frames), RED),
                                np.random.default_rng(seed), fps=fps, size=size)


# Video id -> (frames at 10 fps, red frames); the red frames are the moment the query names.
VIDEOS = {"AA001": (40, (10, 20)), "AA002": (30, (0, 10)), "AA003": (25, (15, 25))}
STA_LINES = ["AA001 1.0 2.0##a person holds a red cup.",
             "AA002 0.0 1.0##someone opens a red door.",
             "",  # blank lines are skipped
             "AA001 2.5 9.0##the moment runs past the video's end.",
             "AA003 1.5 2.5##a red thing at the end."]


@pytest.fixture(scope="module")
def sta(tmp_path_factory):
    """A data root with Charades' video folder (marked extracted), charades_sta_test.txt in
    the real format (CRLF line ends, as downloaded), and a tiny CLIP."""
    root = tmp_path_factory.mktemp("sta")
    videos = root / "data" / "Charades_v1_480"
    videos.mkdir(parents=True)
    (videos / COMPLETE_MARKER).write_text("test\n")
    for seed, (video_id, (count, moment)) in enumerate(VIDEOS.items()):
        write_moment_video(videos / f"{video_id}.mp4", count, moment, seed)
    (root / "charades_sta_test.txt").write_bytes("\r\n".join(STA_LINES).encode() + b"\r\n")
    synthetic.save_tiny_clip(root / "tiny.pt")
    return root


def sta_argv(root, *extra):
    return ["--dataset", "charades_sta", "--charades_sta_annotations",
            str(root / "charades_sta_test.txt"), "--data_root", str(root / "data"),
            "--model", str(root / "tiny.pt"), "--device", "cpu", "--num_workers", "0",
            "--charades_url", "http://127.0.0.1:9/not-needed", *map(str, extra)]


def run(argv):
    return evaluator.main(evaluator.parse_args(argv))


def printed_metrics(stdout):
    """{label: metrics} from the printed lines "{'R1@0.3': ...}  agg: label"."""
    lines = [line for line in stdout.splitlines() if line.startswith("{'R1@")]
    return {line.split("  agg: ")[1]: ast.literal_eval(line.split("  agg: ")[0])
            for line in lines}


# ---------------------------------------------------------------- loaders

def test_charades_sta_loader_reads_the_real_format(sta):
    queries = load_charades_sta(sta / "charades_sta_test.txt")
    assert queries == [("AA001", 1.0, 2.0, "a person holds a red cup."),
                       ("AA002", 0.0, 1.0, "someone opens a red door."),
                       ("AA001", 2.5, 9.0, "the moment runs past the video's end."),
                       ("AA003", 1.5, 2.5, "a red thing at the end.")]


@pytest.mark.parametrize("bad_line,message", [
    ("AA001 1.0 2.0 a person without the separator", "line 2: expected 'VIDEO START END"),
    ("AA001 1.0##only a start", "line 2: expected 'VIDEO START END"),
    ("AA001 1.0 2.0##   ", "line 2: expected 'VIDEO START END"),
    ("AA001 one 2.0##a sentence", "line 2: 'one' is not a time"),
    ("AA001 -1.0 2.0##a sentence", "line 2: '-1.0' is not a time"),
    ("AA001 1.0 nan##a sentence", "line 2: 'nan' is not a time"),
    ("AA001 3.0 2.0##a sentence", "line 2: start 3 is after end 2"),
])
def test_charades_sta_malformed_lines_are_named(tmp_path, bad_line, message):
    path = tmp_path / "charades_sta_test.txt"
    path.write_text(f"AA002 0.0 1.0##fine.\n{bad_line}\nAA003 0 1##fine.\n")
    with pytest.raises(DatasetError, match=message) as error:
        load_charades_sta(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_charades_sta_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match="holds no query"):
        load_charades_sta(tmp_path / "empty.txt")
    with pytest.raises(DatasetError, match="--charades_sta_annotations FILE"):
        charades_sta_annotation_file(None, tmp_path)
    with pytest.raises(DatasetError, match="neither a file nor an http"):
        charades_sta_annotation_file(str(tmp_path / "nowhere.txt"), tmp_path)


def test_charades_sta_annotations_download_from_a_url(tmp_path):
    payload = "AA001 1.0 2.0##a person holds a red cup.\n".encode()
    with synthetic.FileServer(payload) as server:
        url = server.url.replace("MSRVTT.zip", "charades_sta_test.txt")
        path = charades_sta_annotation_file(url, tmp_path / "data", progress=False)
    assert path.parent == tmp_path / "data" / "Charades-STA"
    assert path.name.startswith("charades_sta_test-") and path.suffix == ".txt"
    assert path.read_bytes() == payload and not list(path.parent.glob("*.part"))
    # Once there, it is read without the network (the server is gone).
    assert charades_sta_annotation_file(url, tmp_path / "data") == path


def test_two_annotation_urls_with_one_file_name_are_two_files(tmp_path):
    # Shared-drive links all end in the same name ("uc?id=..."): the second must not be read
    # from the first one's download.
    first, second = b"AA001 1.0 2.0##first.\n", b"AA002 0.0 1.0##second.\n"
    paths = []
    for payload in (first, second):
        with synthetic.FileServer(payload) as server:
            url = server.url.replace("MSRVTT.zip", "uc") + f"?id={len(paths)}"
            paths.append(charades_sta_annotation_file(url, tmp_path / "data", progress=False))
    assert [p.read_bytes() for p in paths] == [first, second]


def test_activitynet_moments_loader(tmp_path):
    path = tmp_path / "val_2.json"
    path.write_text(json.dumps(synthetic.ACTIVITYNET))
    queries = load_activitynet_moments(path)
    assert queries[:3] == [("v_aaa", 5.0, 9.0, "Then she jumps."),
                           ("v_aaa", 0.0, 4.0, "A woman runs."), ("v_bbb", 0.0, 8.0,
                                                                  "A dog swims.")]
    assert len(queries) == sum(len(v["sentences"]) for v in synthetic.ACTIVITYNET.values())


@pytest.mark.parametrize("entry,message", [
    ({"timestamps": [[0, 1]], "sentences": ["a", "b"]}, r"video v_bad has 2 sentence\(s\) but 1"),
    ({"timestamps": [[0, 1], [3]], "sentences": ["a", "b"]}, "v_bad, sentence 2: timestamp"),
    ({"timestamps": [[0, 1], [3, 2]], "sentences": ["a", "b"]}, "sentence 2: start 3 is after"),
    ({"timestamps": [[0, 1], ["x", 2]], "sentences": ["a", "b"]}, "sentence 2: 'x' is not"),
    ({"timestamps": [[0, 1], [1, 2]], "sentences": ["a", " "]}, "sentence 2 is ' '; every"),
    ({"duration": 3.0}, "video v_bad lacks timestamps and sentences"),
])
def test_activitynet_malformed_entries_are_named(tmp_path, entry, message):
    path = tmp_path / "val_1.json"
    path.write_text(json.dumps({"v_ok": {"timestamps": [[0, 1]], "sentences": ["a"]},
                                "v_bad": entry}))
    with pytest.raises(DatasetError, match=message):
        load_activitynet_moments(path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="is not JSON"):
        load_activitynet_moments(path)


@pytest.mark.parametrize("annotations,message", [
    ({}, "lists no video: the split is empty"),
    ([{"sentences": ["a"]}], r"\(a JSON object\), got a list"),
    ({"v_a": {"timestamps": [[0, 1]], "sentences": [7]}},
     "video v_a, sentence 1 is 7; every sentence must be non-empty text"),
    ({"v_a": {"timestamps": [[0, 1]], "sentences": ["a", "b"]}},
     r"video v_a has 2 sentence\(s\) but 1 timestamp\(s\); each sentence needs its own"),
])
def test_activitynet_moments_say_what_retrieval_says(tmp_path, annotations, message):
    # The two tasks read the same file: one set of checks, one message for each problem.
    path = tmp_path / "val_1.json"
    path.write_text(json.dumps(annotations))
    for loader in (load_activitynet_moments, load_paragraphs):
        with pytest.raises(DatasetError, match=message):
            loader(path)


# ---------------------------------------------------------------- end to end

def recompute(content, temperature, fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                                1.0)):
    """Each query's IoU for query-scoring (softmax of the frame cosines over the temperature,
    through the shared moment rule), the sliding windows (brute force) and the whole video,
    from the saved embeddings, with the IoU written out for one pair at a time."""
    position = {v: i for i, v in enumerate(content["video_ids"])}
    offsets = np.concatenate([[0], np.cumsum(content["frame_counts"])])
    ious = {"qs": [], "sliding": [], "whole": []}
    for q, video_id in enumerate(content["query_video_ids"]):
        if video_id not in position:
            continue
        v = position[video_id]
        frames = content["frame_embeds"][offsets[v]:offsets[v + 1]].double()
        text = content["text_embeds"][q].double()
        times, duration = content["frame_times"][v], content["durations"][v]
        start, end = content["moments"][q]
        truth = (min(max(start, 0.0), duration), min(end, duration))
        cosines = (frames @ text) / (frames.norm(dim=1) * text.norm())
        weights = torch.softmax(cosines / temperature, dim=0).numpy()
        moment = moment_from_weights(weights, times, duration)
        ious["qs"].append(hand_iou((moment["start"], moment["end"]), truth))
        starts, ends = frame_cells(times, duration)
        best = None
        for length in sorted({min(len(frames), max(1, round(f * len(frames))))
                              for f in fractions}):
            for first in range(len(frames) - length + 1):
                score = float(similarity_meanpooling(text[None].float(),
                                                     frames[None, first:first + length].float()))
                if best is None or score > best[0] + 1e-6:
                    best = (score, (starts[first], ends[first + length - 1]))
        ious["sliding"].append(hand_iou(best[1], truth))
        ious["whole"].append(hand_iou((0.0, duration), truth))
    return ious


def hand_iou(a, b):
    intersection = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return intersection / union if union > 0 else 0.0


def metrics_of(ious):
    ious = np.array(ious)
    return {"R1@0.3": 100 * np.mean(ious >= 0.3), "R1@0.5": 100 * np.mean(ious >= 0.5),
            "R1@0.7": 100 * np.mean(ious >= 0.7), "mIoU": 100 * np.mean(ious)}


def test_charades_sta_printed_metrics_equal_a_recomputation(sta, tmp_path, capsys):
    saved, report_path = tmp_path / "embeddings.pt", tmp_path / "report.json"
    report = run(sta_argv(sta, "--fps", "4", "--query_scoring_temp", "0.1", "1",
                          "--cache_dir", tmp_path / "cache", "--save_embeddings", saved,
                          "--output_json", report_path, "--bootstrap", "200"))
    printed = printed_metrics(capsys.readouterr().out)
    content = torch.load(saved, map_location="cpu", weights_only=True)
    # Frames by time: 4 a second over 4.0, 3.0 and 2.5 s, each nearest its segment's middle.
    assert content["durations"] == pytest.approx([4.0, 3.0, 2.5])
    assert content["frame_counts"] == [16, 12, 10]
    for times, duration in zip(content["frame_times"], content["durations"]):
        targets = (np.arange(len(times)) + 0.5) / 4
        assert np.abs(np.array(times) - targets).max() <= 0.05 + 1e-9  # 10 fps frames
    for label, key, temperature in [("query-scoring, temp: 0.1", "qs", 0.1),
                                    ("query-scoring, temp: 1.0", "qs", 1.0),
                                    ("sliding windows (mean pooling)", "sliding", 0.1),
                                    ("prior: whole video", "whole", 0.1)]:
        expected = metrics_of(recompute(content, temperature)[key])
        assert printed[label] == {k: round(v, 1) for k, v in expected.items()}, label
        entry = next(r for r in report["results"] if r["label"] == label)
        assert {k: entry[k] for k in expected} == pytest.approx(expected, abs=1e-9)
    # The whole video against the known moments: 1/4, 1/3, (4 - 2.5)/4 clipped, 1/2.5.
    assert report["queries"]["ious"]["prior: whole video"] == pytest.approx(
        [0.25, 1 / 3, 0.375, 0.4], abs=1e-9)
    assert report["queries"]["truth"][2] == pytest.approx([2.5, 4.0])
    assert report["counts"]["clipped_moments"] == 1 and report["counts"]["queries"] == 4
    written = json.loads(report_path.read_text())
    assert written["results"] == report["results"] and written["dataset"]["split"] == "test"
    differences = written["bootstrap"]["differences"]["query-scoring, temp: 0.1"]
    assert set(differences) == {"R1@0.3", "R1@0.5", "R1@0.7", "mIoU"}


def test_second_run_reads_the_cache(sta, tmp_path, capsys):
    first = run(sta_argv(sta, "--fps", "2", "--cache_dir", tmp_path / "cache"))
    capsys.readouterr()
    second = run(sta_argv(sta, "--fps", "2", "--cache_dir", tmp_path / "cache"))
    assert "loaded from cache" in capsys.readouterr().out
    assert second["results"] == first["results"] and second["cache"]["hit"]
    third = run(sta_argv(sta, "--fps", "1", "--cache_dir", tmp_path / "cache"))
    assert not third["cache"]["hit"]  # another frame rate, another entry
    assert third["counts"]["frames"] == 4 + 3 + 3


def test_an_unreadable_or_retrieval_cache_entry_is_recomputed(sta, tmp_path):
    first = run(sta_argv(sta, "--cache_dir", tmp_path / "cache"))
    entry = first["cache"]["path"]
    with open(entry, "r+b") as f:  # a torn write
        f.truncate(100)
    with pytest.warns(UserWarning, match=f"ignoring unreadable embedding cache {entry}"):
        again = run(sta_argv(sta, "--cache_dir", tmp_path / "cache"))
    assert not again["cache"]["hit"] and again["results"] == first["results"]
    retrieval = {"format": 4, "text_embeds": torch.zeros(1, 2)}  # another kind of entry
    torch.save(retrieval, entry)
    with pytest.warns(UserWarning, match="not a moment-localisation embedding file"):
        assert not run(sta_argv(sta, "--cache_dir", tmp_path / "cache"))["cache"]["hit"]


def test_failed_writes_after_the_metrics(sta, tmp_path, monkeypatch, capsys):
    # As retrieval: a cache that cannot be written only warns; a report that cannot be written
    # is one OutputError that says the printed metrics are complete.
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embedding_cache, "save_embeddings", full_disk)
    with pytest.warns(UserWarning, match="could not write the embedding cache .*No space"):
        run(sta_argv(sta, "--cache_dir", tmp_path / "cache"))
    monkeypatch.setattr(embedding_cache, "write_json", full_disk)
    with pytest.raises(OutputError, match="metrics above are complete.*No space"):
        run(sta_argv(sta, "--no_cache", "--output_json", tmp_path / "r.json"))
    assert "agg: sliding windows (mean pooling)" in capsys.readouterr().out


def test_videos_that_cannot_fit_in_memory_are_refused_before_decoding(sta, tmp_path,
                                                                       monkeypatch):
    # The longest video (AA001, 4.0 s) at --fps 10 is 40 frames of 32x32, from its header.
    decoded = []
    monkeypatch.setattr(moment_data, "read_video_times", lambda *a: decoded.append(a))
    monkeypatch.setattr(moment_run, "available_memory_bytes", lambda: 10_000)
    with pytest.raises(ConfigError, match=r"decoding needs about .* GiB of memory \(0 "
                                          r"worker\(s\), batches of 1 video\(s\) x 40 frames of "
                                          r"32x32\), more than the 0.0 GiB available; lower "
                                          r"--fps, --max_frames, --batch_size or --num_workers"):
        run(sta_argv(sta, "--no_cache", "--fps", "10"))
    assert decoded == []


def test_outputs_may_not_replace_the_cache_entry(sta, tmp_path):
    first = run(sta_argv(sta, "--cache_dir", tmp_path / "cache"))
    entry = first["cache"]["path"]
    for option in ("--output_json", "--save_embeddings"):
        with pytest.raises(ConfigError, match=f"{option} {entry} is an input of this run"):
            run(sta_argv(sta, "--cache_dir", tmp_path / "cache", option, entry))
    assert run(sta_argv(sta, "--cache_dir", tmp_path / "cache"))["cache"]["hit"]


def test_missing_video_stops_or_is_left_out(sta, tmp_path, capsys):
    annotations = tmp_path / "sta.txt"
    annotations.write_text("AA001 1.0 2.0##a red cup.\nZZ999 0.0 1.0##not there.\n")
    argv = sta_argv(sta, "--no_cache") + ["--charades_sta_annotations", str(annotations)]
    with pytest.raises(DatasetError, match=r"1 of 2 videos of charades_sta test are missing"):
        run(argv)
    report = run(argv + ["--skip_bad_videos"])
    out = capsys.readouterr().out
    assert report["counts"]["queries"] == 1 and report["counts"]["skipped_queries"] == 1
    assert "[partial: 1 bad video(s) and 1 queries left out" in out


def test_errors_are_one_line(sta, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluator.cli(sta_argv(sta)[:1] + ["charades_sta", "--data_root", str(tmp_path),
                                           "--model", str(sta / "tiny.pt"), "--device", "cpu"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: missing") and "--charades_sta_annotations" in err[-1]


@pytest.mark.parametrize("argv,message", [
    (["--task", "moments"], "--task moments is for --dataset charades_sta or activitynet"),
    (["--charades_sta_annotations", "x.txt"], "--charades_sta_annotations is for"),
    (["--dataset", "charades_sta", "--plot", "p.png"], "--plot and --compare are for"),
    (["--dataset", "charades_sta", "--fps", "0"], "--fps must be a number > 0"),
    (["--dataset", "charades_sta", "--window_fractions", "0"], "--window_fractions must be"),
    (["--dataset", "charades_sta", "--task", "retrieval"], "is a moment benchmark"),
    # A moment option without the moment task would be ignored: a retrieval run, not this one.
    (["--dataset", "activitynet", "--fps", "2"], "--fps: for moment localisation only "
                                                 "(--dataset charades_sta, or --task moments)"),
    (["--max_frames", "8", "--moment_mass", "0.3"], "--max_frames, --moment_mass: for moment"),
    (["--window_fractions", "0.5"], "--window_fractions: for moment localisation only"),
])
def test_bad_moment_options(argv, message, capsys):
    with pytest.raises(SystemExit):
        evaluator.parse_args(argv)
    assert message in capsys.readouterr().err


def test_moment_options_default_when_the_task_is_moments():
    args = evaluator.parse_args(["--dataset", "charades_sta"])
    assert (args.fps, args.max_frames, args.moment_mass) == (1.0, None, 0.5)
    assert args.window_fractions == pytest.approx([0.1 * k for k in range(1, 11)])
    assert evaluator.parse_args(["--dataset", "activitynet"]).fps is None  # retrieval


def test_activitynet_moments_end_to_end(sta, tmp_path, capsys):
    """val_2 of ActivityNet Captions' format: every sentence a query in its own video."""
    data_root, video_root = tmp_path / "data", tmp_path / "videos"
    captions = data_root / "ActivityNetCaptions"
    captions.mkdir(parents=True)
    video_root.mkdir()
    annotations = {"v_aaa": {"duration": 4.0, "timestamps": [[1.0, 2.0], [0.0, 4.0]],
                             "sentences": ["A red cup.", "The whole thing."]},
                   "v_bbb": {"duration": 3.0, "timestamps": [[0.0, 1.0]],
                             "sentences": ["A red door."]}}
    (captions / "val_2.json").write_text(json.dumps(annotations))
    (captions / COMPLETE_MARKER).write_text("test\n")
    write_moment_video(video_root / "v_aaa.mp4", 40, (10, 20), seed=0)
    write_moment_video(video_root / "v_bbb.mkv", 30, (0, 10), seed=1)
    saved = tmp_path / "embeddings.pt"
    report = run(["--dataset", "activitynet", "--task", "moments", "--split", "val_2",
                  "--video_root", str(video_root), "--data_root", str(data_root),
                  "--model", str(sta / "tiny.pt"), "--device", "cpu", "--num_workers", "0",
                  "--no_cache", "--fps", "2", "--save_embeddings", str(saved),
                  "--activitynet_url", "http://127.0.0.1:9/not-needed"])
    printed = printed_metrics(capsys.readouterr().out)
    content = torch.load(saved, map_location="cpu", weights_only=True)
    assert report["dataset"]["split"] == "val_2" and report["counts"]["queries"] == 3
    assert content["captions"] == ["A red cup.", "The whole thing.", "A red door."]
    expected = metrics_of(recompute(content, 0.1)["qs"])
    assert printed["query-scoring, temp: 0.1"] == {k: round(v, 1) for k, v in expected.items()}
    # The second sentence is the whole video: the whole-video prior gets IoU 1 for it.
    assert report["queries"]["ious"]["prior: whole video"][1] == 1.0
    assert math.isclose(report["mean_length_fraction"], (1 / 4 + 1 + 1 / 3) / 3)
