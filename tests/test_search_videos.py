"""search_videos.py: ranking and moments on videos whose colour segment is known, incremental
builds against fresh ones, kill -9 at named points, a reader during a write, damaged files."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import search_videos
from clip_hitchhiker.search import index_format as fmt
from clip_hitchhiker.errors import VideoIndexError
from clip_hitchhiker.search.index_writer import IndexWriter, fingerprint
from clip_hitchhiker.search.video_listing import list_videos
from clip_hitchhiker.search.video_index import VideoIndex
from tests import search_synthetic

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    """The colour CLIP, ten segment videos and their truth, and an index of them."""
    root = tmp_path_factory.mktemp("search")
    model = search_synthetic.save_colour_clip(root / "colour.pt")
    truth = search_synthetic.build_segment_videos(root / "videos")
    index = root / "index"
    run("index", root / "videos", "--index", index, "--model", model)
    return {"root": root, "model": model, "truth": truth, "index": index}


def run(*argv, capsys=None):
    """search_videos.main in this process. returns: its result (and the printed text)."""
    args = search_videos.parse_args([str(a) for a in argv] + (
        ["--device", "cpu", "--num_workers", "0"] if argv[0] == "index" else []))
    return search_videos.main(args)


def cli_error(capsys, *argv):
    """The CLI's exit code and stderr for argv (expected to fail)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        search_videos.cli([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def contents(folder):
    """What an index holds, layout aside: per path, its fingerprint, times and frame bytes."""
    index = VideoIndex.open(folder)
    table = index.table
    return {table["path"][r]: (int(table["size"][r]), table["sha256"][r],
                               float(table["duration"][r]), table["frame_times"][r].tolist(),
                               table["frame_indices"][r].tolist(), index.frames(r).tobytes())
            for r in range(len(index))}


def assert_only_committed_files(folder):
    """No temporary, superseded or crashed run's file is left: only what the manifest names, and
    the journal, which records nothing pending."""
    manifest = json.loads((Path(folder) / fmt.MANIFEST).read_text())
    assert sorted(os.listdir(folder)) == sorted([fmt.MANIFEST, fmt.JOURNAL, *manifest["files"]])
    assert fmt.read_journal(folder) == []


def iou(a, b):
    overlap = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return overlap / (max(a[1], b[1]) - min(a[0], b[0]))


# ----------------------------------------------------------------------------------------------
# Ranking and moments


def test_top1_and_moments_find_the_coloured_segment(colour_data):
    truth = colour_data["truth"]
    queries = [f"a {name} video" for name in truth]
    index = VideoIndex.open(colour_data["index"])
    results = index.search(queries, k=3)
    right = ious = 0
    for name, result in zip(truth, results):
        best = result["hits"][0]
        right += best["video"] == truth[name][0]
        ious += iou((best["start"], best["end"]), truth[name][1]) >= 0.5
        for hit in result["hits"]:
            assert 0 <= hit["start"] <= hit["peak"] <= hit["end"] <= hit["duration"]
    assert right == len(truth) and ious == len(truth)  # >= 90 % required; all hold here
    # The two stages agree with the exhaustive search, scores and moments too.
    assert index.search(queries, k=3, exact=True) == results


def test_moment_of_a_five_second_segment_is_its_first_three_seconds(colour_data):
    """Five equally matching frames hold almost all the weight: half of it takes 3 cells, the
    first three (earliest among equally short runs), around the peak at the first frame."""
    red = VideoIndex.open(colour_data["index"]).search(["a red video"], k=1)[0]["hits"][0]
    start, end = colour_data["truth"]["red"][1]
    assert end - start == 5
    assert (red["start"], red["peak"], red["end"]) == (start, start + 0.5, start + 3)


def test_cli_table_json_thumbnails_and_queries_file(colour_data, tmp_path, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("a red video\n\na blue video\n")
    report = run("search", "--index", colour_data["index"], "--queries", queries, "-k", 2,
                 "--json", "--thumbnails", tmp_path / "thumbs")
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(search_videos.rounded_for_print(report)))
    assert [q["query"] for q in printed["queries"]] == ["a red video", "a blue video"]
    hit = printed["queries"][0]["hits"][0]
    assert set(hit) >= {"rank", "video", "score", "start", "end", "peak", "thumbnail"}
    from PIL import Image
    image = np.asarray(Image.open(hit["thumbnail"]).convert("RGB"), dtype=float)
    assert np.abs(image.mean((0, 1)) - search_synthetic.SEARCH_COLOURS["red"]).max() < 12
    run("search", "--index", colour_data["index"], "a green video", "-k", 1)
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "query: a green video" and table[2].split()[0] == "1"
    assert table[2].split()[-1] == colour_data["truth"]["green"][0]


def test_mean_aggregate_ranks_by_mean_pooling(colour_data):
    from query_scoring import similarity_meanpooling
    import torch

    index = VideoIndex.open(colour_data["index"])
    text = index.encode_texts(["a pink video"])
    hits = index.search_embeddings(text, k=len(index), aggregate="mean", exact=True)[0]
    frames, mask = index.padded_frames(list(range(len(index))))
    expected = similarity_meanpooling(text, frames, video_mask=mask)[0]
    order = torch.argsort(expected, descending=True, stable=True).tolist()
    assert [h["video"] for h in hits] == [index.table["path"][r] for r in order]
    torch.testing.assert_close(torch.tensor([h["score"] for h in hits]), expected[order])


def test_info_reports_model_sampling_times_and_verifies(colour_data, capsys):
    info = run("info", "--index", colour_data["index"], "--verify", "--json", "--times")
    assert info["num_videos"] == 10 and info["config"]["sampling"] == {
        "rule": "fps", "fps": 1.0, "max_frames": None}
    red = next(v for v in info["videos"] if v["video"].endswith("red.mp4"))
    assert red["times"] == [i + 0.5 for i in range(int(red["duration"]))]
    assert info["verified_bytes"] == info["disk_bytes"] > 0


# ----------------------------------------------------------------------------------------------
# Incremental builds


def copy_videos(truth, folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(truth[name][0], folder / f"{name}.mp4")


def test_add_change_delete_and_prune_equal_a_fresh_build(colour_data, tmp_path, capsys):
    truth, model = colour_data["truth"], colour_data["model"]
    videos = tmp_path / "videos"
    copy_videos(truth, videos, ["red", "green", "blue"])
    index = tmp_path / "index"
    run("index", videos, "--index", index, "--model", model)
    copy_videos(truth, videos, ["yellow"])                                  # added
    shutil.copy(truth["purple"][0], videos / "green.mp4")                   # changed
    (videos / "blue.mp4").unlink()                                          # deleted
    summary = run("index", videos, "--index", index, "--model", model)
    assert (summary["encoded"], summary["up_to_date"], summary["pruned"]) == (2, 1, 0)
    assert str((videos / "blue.mp4").resolve()) in contents(index)          # kept: no --prune
    summary = run("index", videos, "--index", index, "--model", model, "--prune")
    assert (summary["encoded"], summary["pruned"]) == (0, 1)
    fresh = tmp_path / "fresh"
    run("index", videos, "--index", fresh, "--model", model)
    assert contents(index) == contents(fresh)
    assert_only_committed_files(index)


def test_a_same_size_edit_that_keeps_the_mtime_is_a_change(tmp_path):
    """touch -r: the size and the mtime restored, the content not; the ctime tells."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"abc")
    before = fingerprint(video)
    time.sleep(0.01)
    video.write_bytes(b"abd")
    os.utime(video, ns=(before["mtime_ns"], before["mtime_ns"]))
    after = fingerprint(video)
    assert (after["size"], after["mtime_ns"]) == (before["size"], before["mtime_ns"])
    writer = IndexWriter(tmp_path / "index", {"embed_dim": 4})
    try:
        for key in ("path", "size", "mtime_ns", "inode", "ctime_ns", "sha256"):
            writer.table[key] = [str(video) if key == "path" else before[key]]
        plan = writer.plan([str(video)])
        assert (plan["to_encode"], plan["up_to_date"]) == ([str(video)], 0)
        writer.table["ctime_ns"] = [after["ctime_ns"]]
        writer.table["sha256"] = [after["sha256"]]
        assert writer.plan([str(video)])["up_to_date"] == 1
    finally:
        writer.close()


def test_paths_may_be_files_folders_and_lists(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ["a/x.mp4", "a/deep/y.MKV", "a/notes.md", "z.webm", "w.avi"]:
        (tmp_path / name).write_bytes(b"0")
    (tmp_path / "list.txt").write_text("w.avi\n\n")
    (tmp_path / "list.csv").write_text("video_path,caption\nz.webm,a caption\n")
    found = list_videos([tmp_path / "a", tmp_path / "list.txt", tmp_path / "list.csv",
                         tmp_path / "z.webm"]).videos
    assert found == sorted(str((tmp_path / n).resolve())
                           for n in ["a/x.mp4", "a/deep/y.MKV", "z.webm", "w.avi"])


def test_uniform_sampling_stores_the_evaluators_frames_and_their_times(colour_data, tmp_path):
    from data_loader import sample_frame_indices

    copy_videos(colour_data["truth"], tmp_path / "videos", ["red"])
    run("index", tmp_path / "videos", "--index", tmp_path / "index", "--model",
        colour_data["model"], "--num_frames", 5)
    index = VideoIndex.open(tmp_path / "index")
    frames = index.table["frame_indices"][0].tolist()
    count = int(index.table["duration"][0] * search_synthetic.VIDEO_FPS)
    assert frames == sample_frame_indices(count, 5)
    assert index.table["frame_times"][0].tolist() == [i / search_synthetic.VIDEO_FPS
                                                      for i in frames]


def test_a_broken_video_is_reported_and_skipped(colour_data, tmp_path, capsys):
    copy_videos(colour_data["truth"], tmp_path / "videos", ["red"])
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video")
    summary = run("index", tmp_path / "videos", "--index", tmp_path / "index", "--model",
                  colour_data["model"])
    assert (summary["encoded"], summary["failed"]) == (1, 1)
    assert "broken.mp4" in capsys.readouterr().err
    info = VideoIndex.open(tmp_path / "index").info()
    assert [s["path"] for s in info["skipped"]] == [str(tmp_path / "videos" / "broken.mp4")]
    assert run("index", tmp_path / "videos", "--index", tmp_path / "index", "--model",
               colour_data["model"])["encoded"] == 0  # not retried while unchanged


def test_other_sampling_or_model_is_refused_in_one_line(colour_data, tmp_path, capsys):
    copy_videos(colour_data["truth"], tmp_path / "videos", ["red"])
    base = ["index", tmp_path / "videos", "--index", tmp_path / "index", "--device", "cpu",
            "--num_workers", "0"]
    run(*base[:4], "--model", colour_data["model"])
    code, err = cli_error(capsys, *base, "--model", colour_data["model"], "--fps", 2)
    assert code == 1 and err.count("\n") == 1 and "sampling" in err and "--index" in err
    other = search_synthetic.save_colour_clip(tmp_path / "other.pt")
    with open(other, "ab") as f:
        f.write(b"\0")  # another file: another model id
    code, err = cli_error(capsys, *base, "--model", other)
    assert code == 1 and err.count("\n") == 1 and f"this run has {other} (sha256:" in err
    assert f"built with the model {colour_data['model']} (sha256:" in err


# ----------------------------------------------------------------------------------------------
# Kills, concurrent readers, damage


def start_paused(videos, index, model, point, tmp_path):
    """search_videos.py index in a subprocess, paused at `point`. returns: the process."""
    signal_file = tmp_path / f"paused-{point.replace(':', '-')}"
    env = {**os.environ, "CLIP_HITCHHIKER_INDEX_PAUSE": point,
           "CLIP_HITCHHIKER_INDEX_PAUSED": str(signal_file), "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "search_videos.py"), "index", str(videos), "--index",
         str(index), "--model", str(model), "--device", "cpu", "--num_workers", "0",
         "--commit_every", "2"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not signal_file.exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise AssertionError(f"never paused at {point}: {process.stderr.read()[-2000:]}")
        time.sleep(0.1)
    return process


def kill_9(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()


@pytest.fixture(scope="module")
def six_videos(colour_data, tmp_path_factory):
    """Six of the videos, and a clean build of them (commits of 2 videos)."""
    folder = tmp_path_factory.mktemp("six")
    copy_videos(colour_data["truth"], folder / "videos", list(colour_data["truth"])[:6])
    run("index", folder / "videos", "--index", folder / "clean", "--model",
        colour_data["model"], "--commit_every", 2)
    return folder / "videos", contents(folder / "clean")


@pytest.mark.parametrize("point, committed_videos", [
    ("video:3", 2), ("shard:2", 2), ("manifest:2", 2),
    ("cleanup:2", 4)])  # after the second manifest, before the files it superseded are removed
def test_kill_9_then_the_next_run_equals_a_clean_build(colour_data, six_videos, tmp_path,
                                                       point, committed_videos):
    videos, clean = six_videos
    index = tmp_path / "index"
    kill_9(start_paused(videos, index, colour_data["model"], point, tmp_path))
    committed = contents(index)  # the last commit: usable, and a subset of the clean build
    assert len(committed) == committed_videos
    assert all(clean[p] == c for p, c in committed.items())
    run("index", videos, "--index", index, "--model", colour_data["model"])
    assert contents(index) == clean
    assert_only_committed_files(index)


def test_a_reader_during_a_write_sees_the_last_commit_and_a_second_writer_is_refused(
        colour_data, six_videos, tmp_path, capsys):
    videos, clean = six_videos
    index = tmp_path / "index"
    process = start_paused(videos, index, colour_data["model"], "manifest:2", tmp_path)
    try:
        reader = VideoIndex.open(index)
        assert reader.manifest["generation"] == 1 and len(reader) == 2
        hits = reader.search(["a red video"], k=5)[0]["hits"]
        assert len(hits) == 2 and all(h["video"] in clean for h in hits)
        code, err = cli_error(capsys, "index", videos, "--index", index, "--model",
                              colour_data["model"], "--device", "cpu")
        assert code == 1 and err.count("\n") == 1 and "in use by another run" in err
    finally:
        kill_9(process)


def damaged_copy(colour_data, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(colour_data["index"], copy)
    manifest = json.loads((copy / fmt.MANIFEST).read_text())
    return copy, manifest


def search_error(capsys, index, *extra):
    return cli_error(capsys, "search", "--index", index, "a red video", *extra)


def test_a_truncated_shard_is_named_in_one_line(colour_data, tmp_path, capsys):
    index, manifest = damaged_copy(colour_data, tmp_path)
    shard = next(n for n in manifest["files"] if n.startswith("frames-"))
    with open(index / shard, "r+b") as f:
        f.truncate(os.path.getsize(index / shard) - 64)
    code, err = search_error(capsys, index)
    assert code == 1 and err.count("\n") == 1
    assert str(index / shard) in err and "truncated" in err and "index again" in err


def test_an_altered_shard_is_caught_when_read_and_by_verify(colour_data, tmp_path, capsys):
    index, manifest = damaged_copy(colour_data, tmp_path)
    shard = next(n for n in manifest["files"] if n.startswith("frames-"))
    data = bytearray((index / shard).read_bytes())
    data[-2:] = b"\x00\x7c"  # the last frame's last value becomes +inf (float16), same size
    (index / shard).write_bytes(bytes(data))
    code, err = search_error(capsys, index, "--exact")
    assert code == 1 and err.count("\n") == 1 and str(index / shard) in err and "crc32" in err
    code, err = cli_error(capsys, "info", "--index", index, "--verify")
    assert code == 1 and err.count("\n") == 1 and str(index / shard) in err


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_a_damaged_manifest_or_table_is_named_in_one_line(colour_data, tmp_path, capsys,
                                                          damage):
    index, manifest = damaged_copy(colour_data, tmp_path)
    for name in (fmt.MANIFEST, manifest["table"]):
        path = index / name
        original = path.read_bytes()
        path.write_bytes(original[:len(original) // 2] if damage == "truncate" else
                         original.replace(b"1", b"2", 1))
        code, err = search_error(capsys, index)
        assert code == 1 and err.count("\n") == 1 and str(path) in err and "index" in err
        path.write_bytes(original)


def test_a_damaged_faiss_file_is_rebuilt_from_the_means(colour_data, tmp_path):
    index, manifest = damaged_copy(colour_data, tmp_path)
    stage1 = index / manifest["stage1"]["file"]
    data = bytearray(stage1.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stage1.write_bytes(bytes(data))
    expected = VideoIndex.open(colour_data["index"]).search(["a red video", "a teal video"])
    with pytest.warns(UserWarning, match="rebuilding the stage-1 index"):
        opened = VideoIndex.open(index)
    assert opened.search(["a red video", "a teal video"]) == expected
    with pytest.raises(VideoIndexError, match="was altered"):
        fmt.verify_files(index, manifest)


def test_two_torchrun_ranks_build_the_index_one_process_builds(colour_data, six_videos, tmp_path):
    videos, clean = six_videos
    index = tmp_path / "index"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(REPO / "search_videos.py"), "index", str(videos),
               "--index", str(index), "--model", str(colour_data["model"]), "--device", "cpu",
               "--num_workers", "0", "--commit_every", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert contents(index) == clean
    manifest = json.loads((index / fmt.MANIFEST).read_text())
    assert any(name.endswith("-r1.npy") for name in manifest["files"])  # rank 1 wrote shards
    assert manifest["generation"] == 2  # 6 videos, 2 ranks, 2 per rank per commit
    assert_only_committed_files(index)


@pytest.mark.parametrize("kind", ["ivfsq8", "ivfpq", "hnsw"])
def test_other_stage1_types_are_recorded_kept_up_to_date_and_agree(colour_data, tmp_path, kind):
    truth, model = colour_data["truth"], colour_data["model"]
    videos = tmp_path / "videos"
    copy_videos(truth, videos, list(truth)[:8])
    index = tmp_path / "index"
    run("index", videos, "--index", index, "--model", model, "--stage1", kind)
    (videos / "red.mp4").unlink()
    run("index", videos, "--index", index, "--model", model, "--prune")  # the type is kept
    opened = VideoIndex.open(index)
    assert opened.manifest["stage1"]["type"] == kind and opened.stage1.ntotal == sum(
        -(-len(t) // 8) for t in opened.table["frame_times"])
    queries = [f"a {name} video" for name in list(truth)[1:8]]
    assert opened.search(queries, k=3) == opened.search(queries, k=3, exact=True)


def test_max_frames_widens_the_segments_and_says_so(colour_data, tmp_path, capsys):
    copy_videos(colour_data["truth"], tmp_path / "videos", ["red"])  # 13 s
    summary = run("index", tmp_path / "videos", "--index", tmp_path / "index", "--model",
                  colour_data["model"], "--fps", 1, "--max_frames", 4)
    assert summary["capped"] == 1 and "sampled at a lower rate" in capsys.readouterr().out
    times = VideoIndex.open(tmp_path / "index").table["frame_times"][0].tolist()
    # Four segments of 13 / 4 s; their midpoints 1.625, 4.875, 8.125, 11.375 s, each taken by
    # the nearest frame of the 4 fps video (ties to the earlier one).
    assert times == [1.5, 4.75, 8.0, 11.25]


def test_keyframes_indexes_the_nearest_key_frames_at_their_true_times(colour_data, tmp_path,
                                                                      capsys):
    from tests.test_video_decoders import write_video

    # 10 s at 4 fps, a key frame every 8 frames: 0, 2, 4, 6, 8 s. Midpoints 0.5, 1.5, ..., 9.5 s
    # take the nearest key frame (ties to the earlier): 0, 2, 2, 4, 4, 6, 6, 8, 8, 8 s.
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "keys.mp4", 40, fps=4,
                options={"g": "8", "keyint_min": "8", "sc_threshold": "0", "bf": "2"})
    base = ["index", tmp_path / "videos", "--index", tmp_path / "index", "--model",
            colour_data["model"]]
    run(*base, "--keyframes", "--decoder", "pyav")
    index = VideoIndex.open(tmp_path / "index")
    assert index.table["frame_times"][0].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert index.table["frame_indices"][0].tolist() == [0, 8, 16, 24, 32]
    assert index.info()["config"]["sampling"] == {"rule": "fps", "fps": 1.0, "max_frames": None,
                                                  "keyframes": True}
    capsys.readouterr()
    search_videos.main(search_videos.parse_args(["info", "--index", str(tmp_path / "index")]))
    assert "1 fps, key frames only" in capsys.readouterr().out
    # Adding with every frame's sampling is another sampling: refused in one line.
    code, err = cli_error(capsys, *base, "--device", "cpu", "--num_workers", "0")
    assert code == 1 and err.count("\n") == 1 and "sampling" in err
    code, err = cli_error(capsys, *base, "--keyframes", "--num_frames", 4)
    assert code == 2 and "--keyframes samples by time (--fps); it takes no --num_frames" in err


def write_offset_transport_stream(path, num_frames=40, fps=4, first_pts=20):
    """An MPEG-TS video whose first frame is at first_pts / fps seconds (5 s), as transport
    streams and some WebM files start: frame i at (first_pts + i) / fps."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i % 256, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("sampling", [{"rule": "uniform", "num_frames": 5},
                                      {"rule": "fps", "fps": 1.0, "max_frames": None}])
def test_frame_times_count_from_the_first_frame_under_either_sampling_rule(tmp_path, sampling):
    """A stream that starts at 5 s: every rule stores seconds from its first frame, so that the
    moments fall inside [0, duration] where the player shows them."""
    path = tmp_path / "late_start.ts"
    write_offset_transport_stream(path)
    _, info = search_videos.decode_video(str(path), sampling, "pyav")
    assert info["duration"] == 10.0
    assert info["times"] == [i / 4 for i in info["indices"]]


def test_nprobe_reaches_the_search_and_a_wrong_one_is_refused(colour_data, capsys, monkeypatch):
    code, err = search_error(capsys, colour_data["index"], "--nprobe", "0")
    assert code == 2 and "--nprobe must be >= 1, got 0" in err
    asked, original = [], VideoIndex.search_embeddings
    monkeypatch.setattr(VideoIndex, "search_embeddings", lambda self, *args, **kwargs: asked.append(
        kwargs.get("nprobe", args[7] if len(args) > 7 else None)) or original(self, *args,
                                                                                **kwargs))
    run("search", "--index", colour_data["index"], "a red video", "--nprobe", "3")
    run("search", "--index", colour_data["index"], "a red video")
    assert asked == [3, None]
