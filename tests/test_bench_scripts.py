"""The benchmark and GPU-check scripts run (tiny sizes, CPU) and print every figure."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.system_libraries import needs_ffmpeg

REPO = Path(__file__).resolve().parent.parent


@needs_ffmpeg  # it decodes with torchcodec on the "device"
def test_gpu_check_cpu_dry_run(tmp_path):
    out = tmp_path / "results" / "gpu_check.txt"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu-dry-run",
                             "--out", str(out)], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text == result.stdout
    assert "GPU: none (CPU dry run)" in text
    assert len(re.findall(r"^encode: +[\d.]+ frames/s", text, re.M)) == 2
    assert len(re.findall(r"^decode: +[\d.]+ frames/s", text, re.M)) == 2
    assert len(re.findall(r"^end-to-end: +[\d.]+ videos/s.*preprocess on workers", text,
                          re.M)) == 2
    assert len(re.findall(r"^end-to-end: +[\d.]+ videos/s.*preprocess on device", text,
                          re.M)) == 2
    # On the CPU the two placements run the same operations: no difference at all.
    assert re.search(r"^preprocess device vs workers: max \|difference\| 0\.00e\+00", text, re.M)
    assert len(re.findall(r"^embeddings device vs workers preprocessing, \d+ frames: max "
                          r"\|difference\| 0\.00e\+00", text, re.M)) == 2
    assert re.search(r"^scoring: .* metrics identical: True", text, re.M)
    # torchcodec on the "device" (the CPU here) against the CPU: the same decoder, no difference.
    assert re.search(r"^gpu decode: +[\d.]+ frames/s on cpu, .* max \|pixel difference\| 0 "
                     r"levels", text, re.M)
    assert re.search(r"^similarity_queryscoring torch.float32: .* \([\d.]+x\)", text, re.M)
    assert re.search(r"^similarity_queryscoring torch.bfloat16: .* \([\d.]+x\)", text, re.M)
    # The search line (at 1M on a GPU; 2000 videos on the CPU here): p50 and recall.
    assert re.search(r"^quick \(2000 videos .* stage 2 on cpu[^)]*\): .* cold p50 [\d.]+ .* "
                     r"recall@10 [01]\.\d{3}", text, re.M)


def test_gpu_check_refuses_unknown_arguments():
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--bogus"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument --bogus" in result.stderr


def test_bench_query_scoring_quick():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_query_scoring.py"),
                             "--quick", "--repeats", "1"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(re.findall(r"\(\d+\.\d\dx floor\)", result.stdout)) == 2
    assert re.search(r"speed-up \d+\.\dx", result.stdout)


@needs_ffmpeg  # it measures torchcodec too
def test_bench_long_video_quick(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_long_video.py"),
                             "--quick", "--repeats", "1", "--work_dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    floors = re.findall(r"^([\d.]+) min, key frame every (\d+) s \((\d+) frames, \d+% of the "
                        r"bytes in key frames\): floor", result.stdout, re.M)
    assert floors == [("0.2", "2", "360"), ("0.2", "10", "360"), ("0.4", "2", "720"),
                      ("0.4", "10", "720")]
    modes = re.findall(r"^0.2 min, key frame every 2 s: (\w+) +(\w+) +(\d+) frames +[\d.]+ s per "
                       r"video-hour \([\d.]+x the floor", result.stdout, re.M)
    # 12 s at 1 fps: 12 frames; key frames every 2 s nearest the midpoints: 6.
    expected = [("num_frames", 120), ("fps", 12), ("keyframes", 6)]
    assert [(d, m, int(n)) for d, m, n in modes] == (
        [("decord", m, n) for m, n in expected] + [("pyav", m, n) for m, n in expected] +
        [("pyav", "fps_no_seek", 12)] + [("torchcodec", m, n) for m, n in expected])
    clips = re.findall(r"^320x240 clips: (\w+) +num_frames 16: +[\d.]+ ms per clip \(([\d.]+)x "
                       r"decord\)", result.stdout, re.M)
    assert [d for d, _ in clips] == ["decord", "pyav", "torchcodec"] and clips[0][1] == "1.00"


def test_bench_pipeline_quick(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_pipeline.py"),
                             "--quick", "--work_dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    workers = re.findall(r"^one worker, (.*) \(measured (\d+)\), +(\d+) frames/video: decode only "
                         r"+[\d.]+ frames/s .* decode \+ preprocess +[\d.]+ frames/s .*: "
                         r"[\d.]+x$", result.stdout, re.M)
    assert [(label, frames) for label, _, frames in workers] == [
        ("320 kbit/s", "16"), ("320 kbit/s", "120"), ("crf 23", "16"), ("crf 23", "120")]
    # The bitrate asked for is the bitrate written (x264's rate control, within 25 %);
    # crf 23 on this texture is well above it.
    assert 240 <= int(workers[0][1]) <= 400 and int(workers[2][1]) > 600
    assert re.search(r"^pipeline / \(decode \+ encode\) = [\d.]+", result.stdout, re.M)
    # Interrupted writes never stay behind as videos or checkpoints a later run would reuse.
    # (write_atomically's temporary files are hidden: ".<name>.<random>")
    assert not [p for p in tmp_path.rglob(".*")]


def test_interrupted_synthetic_video_is_not_kept(tmp_path, monkeypatch):
    """A video whose writing fails leaves no file at its path, so make_videos writes it again."""
    import av

    sys.path.insert(0, str(REPO))
    from bench.common import make_videos

    real_from_ndarray, calls = av.VideoFrame.from_ndarray, []

    def fail_on_frame_45(*args, **kwargs):
        calls.append(1)
        if len(calls) == 45:  # after x264's lookahead: packets are on disk
            raise KeyboardInterrupt
        return real_from_ndarray(*args, **kwargs)

    from bench import common
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail_on_frame_45)
    path = tmp_path / "video.mp4"
    try:
        common.write_textured_video(path, 2)
    except KeyboardInterrupt:
        pass
    assert len(calls) == 45 and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", real_from_ndarray)
    csv = make_videos(tmp_path, 1, (1, 1), kbps=100)
    assert csv.read_text() == "video_path,caption\nvideo0000.mp4,a synthetic clip number 0\n"
    import decord
    assert len(decord.VideoReader(str(csv.parent / "video0000.mp4"))) == 30


def test_bench_bootstrap_quick():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_bootstrap.py"),
                             "--quick", "--repeats", "1"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^floor \(the draws alone\): [\d.]+ s$", result.stdout, re.M)
    assert re.findall(r"^bootstrap, (\d) aggregations: [\d.]+ s \([\d.]+x floor\)$",
                      result.stdout, re.M) == ["2", "3"]
    # The weighted statistics equal the direct metrics of the same draws.
    difference = re.search(r"max \|difference\| from the bootstrap's values (\S+)$",
                           result.stdout, re.M)
    assert float(difference.group(1)) < 1e-9


def test_bench_search_quick_with_the_page_against_the_cli(tmp_path):
    # 500 videos in 50 topics: 10 a topic, as the quick size's 2000 in 200, at a quarter the build.
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_search.py"), "--quick",
                             "--videos", "500", "--topics", "50", "--page", "--workdir",
                             str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # The size's own line (a run without --page prints the same), then the page's.
    assert re.search(r"^quick \(500 videos x 20 frames, 50 topics, stage 1 flat, codes yes, "
                     r"stage 2 on cpu, reader threads [^)]+\): build \d+ s, .* one query cold "
                     r"p50 [\d.]+ / p95 [\d.]+ / "
                     r"p99 [\d.]+ ms .* warm p50 .* recall@10 [01]\.\d{3}, recall@1 [01]\.\d{3}; "
                     r"exhaustive \d+ ms", result.stdout, re.M)
    line = re.search(r"^quick search page: one query p50 ([\d.]+) ms against the CLI's ([\d.]+) "
                     r"ms \(([+-][\d.]+) ms; target <= \+20 ms\), p95 [\d.]+ against [\d.]+ ms$",
                     result.stdout, re.M)
    assert line, result.stdout
    page, cli, added = map(float, line.groups())
    assert abs(page - cli - added) < 0.11  # the line's difference is its two figures'
    assert list(tmp_path.iterdir()) == []  # the bench deletes what it wrote


def test_bench_search_keeps_an_index_then_measures_it_again_with_ivfsq8(tmp_path):
    bench = [sys.executable, str(REPO / "bench" / "bench_search.py"), "--quick", "--videos",
             "500", "--topics", "50"]
    work, kept, truth = tmp_path / "work", tmp_path / "kept", tmp_path / "truth.json"
    work.mkdir()
    # The build's reader searches exhaustively and writes --truth; the reused index's reads it.
    built = subprocess.run(bench + ["--workdir", str(work), "--keep", str(kept), "--stage1",
                                    "ivfsq8", "--truth", str(truth)], capture_output=True,
                           text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    assert list(work.iterdir()) == [] and (kept / "manifest.json").is_file()
    reused = subprocess.run(bench + ["--reuse", str(kept), "--truth", str(truth), "--threads",
                                     "1"], capture_output=True, text=True, timeout=600)
    assert reused.returncode == 0, reused.stderr[-3000:]
    recalls = []
    for result, threads, built_or_reused in ((built, r"[^)]+", r"build \d+ s"),
                                             (reused, "1", "reused")):
        line = re.search(r"^quick \(500 videos x 20 frames, 50 topics, stage 1 ivfsq8, codes "
                         rf"yes, stage 2 on cpu, reader threads {threads}\): {built_or_reused}, "
                         r"disk .* recall@10 "
                         r"([01]\.\d{3}).*$", result.stdout, re.M)
        assert line and ("read from --truth" in line.group(0)) == (result is reused)
        recalls.append(line.group(1))
    assert recalls[0] == recalls[1] and len(json.loads(truth.read_text())["exact"]) == 20
    refused = subprocess.run(bench + ["--keep", str(kept)], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and f"--keep {kept} exists" in refused.stderr


def test_bench_search_refuses_a_negative_thread_count_before_building():
    refused = subprocess.run([sys.executable, str(REPO / "bench" / "bench_search.py"), "--quick",
                              "--threads", "-1"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "--threads must be >= 0 (0: the libraries' own counts), got -1" in refused.stderr
