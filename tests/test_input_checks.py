"""Issue 18, parts 1, 3 and 4: Charades as the official evaluation reads it, bad inputs that
ended in a traceback or a silently wrong result, and a cache that outlives a prompt sweep.
Each test fails on the code before it."""
import json

import pytest
import torch

import run_msr_retrieval as cli_module
from clip_hitchhiker import reporting
from clip_hitchhiker.datasets.activitynet import load_paragraphs
from clip_hitchhiker.video.batch_memory import decoding_memory_bytes
from clip_hitchhiker.datasets.charades import load_charades_classes, load_charades_split
from clip_hitchhiker.errors import ConfigError, DatasetError, ModelLoadError, VideoDecodeError
from tests import synthetic


def run(tmp_path, data_root, model, *extra):
    return cli_module.main(cli_module.parse_args(synthetic.cli_argv(tmp_path, data_root, model,
                                                                    *extra)))


def parse_error(argv, capsys):
    """The one line parse_args prints before exiting."""
    with pytest.raises(SystemExit):
        cli_module.parse_args(argv)
    return capsys.readouterr().err.strip().splitlines()[-1]


# ---------------------------------------------------------------- Charades files

CHARADES_HEADER = "id,subject,actions,length\n"


def test_a_charades_video_listed_twice_counts_once_with_a_warning(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text(CHARADES_HEADER + "AB001,S1,c000 0 1,5\nAB002,S1,,5\n"
                    "AB001,S1,c001 0 1,5\n")
    with pytest.warns(UserWarning, match=r"1 row\(s\) repeat a video already listed \(e.g. "
                                         r"\['AB001'\]\); each video counts once"):
        video_ids, labels = load_charades_split(path, ["c000", "c001"])
    assert video_ids == ["AB001", "AB002"] and labels == [[0], []]


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_an_empty_charades_class_file_says_so(tmp_path, text):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=f"the class file {path} is empty"):
        load_charades_classes(path)


@pytest.mark.parametrize("text", ["", CHARADES_HEADER])
def test_an_empty_charades_split_says_so(tmp_path, text):
    path = tmp_path / "test.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=f"{path} lists no video: the split is empty"):
        load_charades_split(path, ["c000"])


# ---------------------------------------------------------------- prompts

@pytest.mark.parametrize("template,problem", [
    ("{} and {}", "has 2 replacement field"), ("{0}", "has 1 replacement field"),
    ("{name}", "has 1 replacement field"), ("a video of {!r}", "has 1 replacement field"),
    ("a { video of {}", "has a stray brace"), ("a } video of {}", "has a stray brace")])
def test_prompt_templates_need_exactly_one_empty_field(template, problem, capsys):
    line = parse_error(["--dataset", "charades", "--prompt", "{}", "--prompt", template], capsys)
    assert f"error: --prompt {template!r} " in line and problem in line
    assert "write a literal brace as {{ or }}" in line


def test_a_literal_brace_in_a_prompt_is_allowed():
    args = cli_module.parse_args(["--dataset", "charades", "--prompt", "{{x}} {}"])
    assert args.prompt == ["{{x}} {}"]


# ---------------------------------------------------------------- caption CSVs and video files

@pytest.mark.parametrize("rows,lines", [
    (["a.mp4,a dog, running", "b.mp4,a cat, sitting"], [2, 3]),  # pandas read an index column
    (["a.mp4,a dog running", "b.mp4,a cat, sitting"], [3])])      # pandas: a bare parser error
def test_unquoted_commas_in_captions_say_where_and_what_to_do(tmp_path, rows, lines):
    import data_loader
    csv = tmp_path / "mine.csv"
    csv.write_text("\n".join(["video_path,caption"] + rows) + "\n")
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{len(lines)} row\(s\) have more fields than the "
                                           rf"header's 2, on line\(s\) \{lines}: captions with "
                                           "commas must be quoted"):
        data_loader.CSVDataset(csv, tmp_path, None, 4)


def test_quoted_commas_are_captions(tmp_path):
    import data_loader
    csv = tmp_path / "mine.csv"
    csv.write_text('video_path,caption\na.mp4,"a dog, running"\n')
    (tmp_path / "a.mp4").write_bytes(b"")
    assert data_loader.CSVDataset(csv, tmp_path, None, 4).queries["caption"].tolist() == [
        "a dog, running"]


def test_a_folder_named_like_a_video_is_not_a_file(tmp_path):
    import data_loader
    (tmp_path / "clip.mp4").mkdir()
    for read in (lambda p: data_loader.read_video(p, 4), data_loader.read_video_times):
        with pytest.raises(VideoDecodeError, match="clip.mp4 is a folder, not a video file"):
            read(tmp_path / "clip.mp4")
    csv = tmp_path / "mine.csv"
    csv.write_text("video_path,caption\nclip.mp4,a clip\n")
    with pytest.raises(DatasetError, match=r"1 video_path\(s\) name a folder, not a video file "
                                           r"\(first: .*clip.mp4\)"):
        data_loader.CSVDataset(csv, tmp_path, None, 4)


# ---------------------------------------------------------------- ActivityNet annotations

@pytest.mark.parametrize("annotations,message", [
    ([{"sentences": ["a"]}], r"should map each video id to its timestamps and sentences \(a "
                            r"JSON object\), got a list"),
    ({}, "lists no video: the split is empty"),
    ({"v_a": {"timestamps": [[0, 1]], "sentences": [7]}}, "video v_a, sentence 1 is 7; every "
                                                          "sentence must be non-empty text"),
    ({"v_a": {"timestamps": [[0, 1], [1, 2]], "sentences": ["a", "  "]}},
     "video v_a, sentence 2 is '  '; every sentence must be non-empty text"),
    ({"v_a": {"timestamps": [[0, 1]], "sentences": ["a", "b"]}},
     r"video v_a has 2 sentence\(s\) but 1 timestamp\(s\); each sentence needs its own")])
def test_activitynet_annotation_problems(tmp_path, annotations, message):
    path = tmp_path / "val_1.json"
    path.write_text(json.dumps(annotations))
    with pytest.raises(DatasetError, match=message):
        load_paragraphs(path)


# ---------------------------------------------------------------- bootstrap options

@pytest.mark.parametrize("argv,message", [
    (["--bootstrap", "1000", "--seed", "-1"], "--seed must be >= 0 (numpy's generator takes "
                                              "no negative seed), got -1"),
    (["--bootstrap", "2"], "--bootstrap must be 0 (off) or between 100"),
    (["--bootstrap", "1"], "--bootstrap must be 0 (off) or between 100"),
    (["--bootstrap", "10000000"], "and 100000 (more only cost memory and time), got 10000000"),
    (["--bootstrap", "-5"], "--bootstrap must be 0 (off) or between 100")])
def test_bootstrap_options_are_checked_before_any_work(argv, message, capsys):
    assert message in parse_error(argv, capsys)


def test_a_negative_seed_without_bootstrap_is_unused_and_allowed():
    assert cli_module.parse_args(["--seed", "-1"]).seed == -1


def test_help_states_the_tasks_and_the_bootstrap_bounds(capsys):
    with pytest.raises(SystemExit):
        cli_module.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "action recognition on Charades" in text
    assert "moment localisation on Charades-STA and ActivityNet Captions" in text
    assert "100 to 100000 resamples, or 0: off (the default)" in text
    assert "moments: from the sliding windows" in text
    assert "charades and charades_sta test; activitynet val_1 (default), val_2" in text


# ---------------------------------------------------------------- --compare

def test_compare_says_first_which_settings_differ_and_lists_lone_temperatures(
        tmp_path, data_root, tiny_clip_files, capsys):
    run(tmp_path, data_root, tiny_clip_files["torchscript"], "--query_scoring_temp", "0.1", "1.0",
        "--output_json", tmp_path / "before.json")
    capsys.readouterr()
    run(tmp_path, data_root, tiny_clip_files["torchscript"], "--query_scoring_temp", "0.1", "0.5",
        "--antialias", "--compare", tmp_path / "before.json")
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(f"compared with {tmp_path / 'before.json'}:")
    assert lines[start + 1] == ("settings DIFFER (the likely cause of any difference below): "
                                "antialias False -> True")
    assert ("aggregations in only one run: earlier only ['query-scoring, temp: 1.0'], this run "
            "only ['query-scoring, temp: 0.5']") in lines


def test_compare_with_an_edited_report_keeps_the_outputs(tmp_path, data_root, tiny_clip_files,
                                                         capsys):
    (tmp_path / "edited.json").write_text(json.dumps({
        "config": {"model": "another.pt", "prompt": None},
        "results": [{"aggregation": "mean-pooling", "temperature": None, "t2v": {"R1": "high"}},
                    "not an entry"],
        "manifest": {"videos": {"video7012": {"frames": 3}, "video7010": "?"}}}))
    report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--compare",
                 tmp_path / "edited.json", "--output_json", tmp_path / "r.json")
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["results"] == report["results"]
    model = str(tiny_clip_files["torchscript"])
    assert f"settings DIFFER (the likely cause of any difference below): model 'another.pt' -> " \
           f"{model!r}" in out
    assert "not recorded in the earlier report, so not compared: dataset, split, backend, " \
           "weights, num_frames, antialias, preprocess_on, paragraph" in out
    assert "split: not recorded in the earlier report" in out
    assert "versions: not recorded in the earlier report" in out
    assert "cannot compare agg: mean-pooling: the earlier report holds no such metrics" in out
    assert "videos decoded differently: 1 of 2" in out and "video7012: frames 3 -> 19" in out


def test_compare_reports_of_classification():
    earlier = {"results": [{"aggregation": "mean-pooling", "temperature": None, "mAP": 20.0}]}
    current = {"versions": {}, "manifest": {"split_sha256": "c" * 64, "videos": {}},
               "results": [{"aggregation": "mean-pooling", "temperature": None, "mAP": 21.5}]}
    assert reporting.compare_reports(earlier, current, "old.json") == [
        "compared with old.json:", "split: not recorded in the earlier report",
        "versions: not recorded in the earlier report",
        "this run minus earlier: {'mAP': +1.5}  agg: mean-pooling",
        "videos decoded: not recorded in the earlier report"]


def test_compare_refuses_what_is_not_a_report(tmp_path, data_root, tiny_clip_files):
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="--compare .*list.json is not a report written by "
                                          "--output_json"):
        run(tmp_path, data_root, tiny_clip_files["torchscript"], "--compare",
            tmp_path / "list.json")


# ---------------------------------------------------------------- models, frames, memory, outputs

def test_open_clip_weights_of_another_architecture(tiny_clip_files):
    pytest.importorskip("open_clip")
    from clip_hitchhiker.models.backends import load_model
    with pytest.raises(ModelLoadError, match=r"--pretrained .*tiny_sd.pt cannot be loaded into "
                                             r"open_clip's ViT-B-32 \(AssertionError: .*\); is "
                                             r"it that architecture's weights\?"):
        load_model("open_clip", "ViT-B-32", torch.device("cpu"),
                   pretrained=str(tiny_clip_files["state_dict"]))


def test_videos_shorter_than_num_frames_get_one_note(tmp_path, data_root, tiny_clip_files,
                                                     capsys):
    # The jsfusion videos have 5, 12, 19, 26 and 33 frames.
    report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--num_frames", "13")
    notes = [line for line in capsys.readouterr().err.splitlines() if "fewer frames" in line]
    assert notes == ["note: 2 of 5 videos have fewer frames than --num_frames 13 (e.g. "
                     "video7010: 5); their frames repeat"]
    assert report["counts"]["videos_shorter_than_num_frames"] == 2


def test_decoding_memory_by_hand():
    # A batch: 2 videos x 3 frames x 3 x 4 x 5 = 360 bytes; workers hold it with two float32
    # copies (360 x 9) each, and 2 x 3 batches wait, preprocessed to 2 x 2 float32 (288 bytes).
    assert decoding_memory_bytes(batch_size=2, num_frames=3, height=4, width=5, num_workers=2,
                                 prefetch=3, crop=2, itemsize=4) == 2 * 3240 + 6 * 288
    # No workers, raw frames for the device: the batch being decoded and the one handed over.
    assert decoding_memory_bytes(batch_size=2, num_frames=3, height=4, width=5, num_workers=0,
                                 prefetch=2) == 360 + 360


def test_batches_that_cannot_fit_are_refused_before_decoding(tmp_path, data_root,
                                                              tiny_clip_files, monkeypatch):
    import data_loader
    monkeypatch.setattr(cli_module, "available_memory_bytes", lambda: 10_000)
    monkeypatch.setattr(data_loader, "read_video", no_decoding)
    with pytest.raises(ConfigError, match=r"decoding needs about .* GiB of memory \(0 worker\(s\), "
                                          r"batches of 1 video\(s\) x 4 frames of 64x48\), more "
                                          r"than the 0.0 GiB available; lower --num_frames, "
                                          r"--batch_size or --num_workers"):
        run(tmp_path, data_root, tiny_clip_files["torchscript"])


def test_output_json_may_not_replace_the_cache_entry(tmp_path, data_root, tiny_clip_files):
    first = run(tmp_path, data_root, tiny_clip_files["torchscript"])
    entry = first["cache"]["path"]
    with pytest.raises(ConfigError, match=f"--output_json {entry} is an input of this run"):
        run(tmp_path, data_root, tiny_clip_files["torchscript"], "--output_json", entry)
    assert run(tmp_path, data_root, tiny_clip_files["torchscript"])["cache"]["hit"]


# ---------------------------------------------------------------- the cache and prompt sweeps

@pytest.fixture(scope="module")
def charades_urls(tmp_path_factory):
    root = tmp_path_factory.mktemp("charades_source")
    synthetic.build_charades(root)
    with synthetic.FileServer(synthetic.zip_bytes(root / "Charades")) as annotations, \
            synthetic.FileServer(synthetic.zip_bytes(root / "Charades_v1_480")) as videos:
        yield annotations.url, videos.url


def charades_argv(tmp_path, model, urls, *extra):
    argv = synthetic.cli_argv(tmp_path, tmp_path / "data", model, "--dataset", "charades",
                              "--charades_annotations_url", urls[0], "--charades_url", urls[1],
                              "--query_scoring_temp", "0.1", "1.0", *extra)
    return argv


def no_decoding(*args, **kwargs):
    raise AssertionError("a video was decoded")


def test_a_prompt_sweep_decodes_the_videos_once(tmp_path, tiny_clip_files, charades_urls,
                                                monkeypatch):
    import data_loader
    model = tiny_clip_files["torchscript"]
    first = cli_module.main(cli_module.parse_args(charades_argv(
        tmp_path, model, charades_urls, "--prompt", "{}", "--save_embeddings",
        tmp_path / "first.pt")))
    assert first["counts"]["decoded_videos"] == 5 and not first["cache"]["hit"]
    prompts = ["--prompt", "a video of a person {}", "--prompt", "{}"]
    cold = cli_module.main(cli_module.parse_args(charades_argv(
        tmp_path, model, charades_urls, *prompts, "--no_cache", "--save_embeddings",
        tmp_path / "cold.pt")))
    monkeypatch.setattr(data_loader, "read_video", no_decoding)
    swept = cli_module.main(cli_module.parse_args(charades_argv(
        tmp_path, model, charades_urls, *prompts, "--save_embeddings", tmp_path / "swept.pt")))
    assert swept["cache"]["hit"] and swept["counts"]["decoded_videos"] == 0
    assert swept["results"] == cold["results"]
    saved = {name: torch.load(tmp_path / f"{name}.pt", weights_only=True)
             for name in ("first", "cold", "swept")}
    assert torch.equal(saved["swept"]["text_embeds"], saved["cold"]["text_embeds"])
    assert not torch.equal(saved["swept"]["text_embeds"], saved["first"]["text_embeds"])
    assert torch.equal(saved["swept"]["video_embeds"], saved["cold"]["video_embeds"])


def test_edited_captions_reuse_the_video_embeddings(tmp_path, data_root, tiny_clip_files,
                                                    monkeypatch):
    import data_loader
    videos = data_root / "MSRVTT" / "videos" / "all"
    csv = tmp_path / "mine.csv"
    csv.write_text("video_path,caption\nvideo7010.mp4,a red clip\nvideo7011.mp4,a blue clip\n")
    first = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--csv", csv,
                "--video_root", videos)
    csv.write_text("video_path,caption\nvideo7010.mp4,something else\n"
                   "video7011.mp4,a blue clip\nvideo7011.mp4,one more\n")
    cold = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--csv", csv,
               "--video_root", videos, "--no_cache")
    monkeypatch.setattr(data_loader, "read_video", no_decoding)
    edited = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--csv", csv,
                 "--video_root", videos, "--output_json", tmp_path / "r.json")
    assert edited["cache"]["hit"] and edited["counts"]["decoded_videos"] == 0
    assert edited["counts"]["queries"] == 3 and first["counts"]["queries"] == 2
    assert edited["results"] == cold["results"]
    assert json.loads((tmp_path / "r.json").read_text())["manifest"] == cold["manifest"]


def test_msrvtt_splits_with_the_same_videos_share_their_embeddings(tmp_path, data_root,
                                                                    tiny_clip_files, monkeypatch):
    import data_loader
    one_caption = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--split", "jsfusion")
    monkeypatch.setattr(data_loader, "read_video", no_decoding)
    all_captions = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--split", "miech")
    assert all_captions["cache"]["hit"] and all_captions["counts"]["decoded_videos"] == 0
    assert (one_caption["counts"]["queries"], all_captions["counts"]["queries"]) == (5, 14)
