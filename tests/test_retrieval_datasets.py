"""MSVD, DiDeMo, LSMDC and VATEX end to end on synthetic data in the real annotation formats,
downloaded from 127.0.0.1 where the real files are downloaded: the loaders' counts and
query-to-video mapping, the printed metrics against a transcription of the official evaluation
scripts, computed from --save_embeddings, and the missing-video report."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import run_msr_retrieval as cli_module
from clip_hitchhiker.datasets.choice import build_dataset
from clip_hitchhiker.datasets.didemo import load_didemo_paragraphs
from clip_hitchhiker.datasets.lsmdc import load_lsmdc_queries, lsmdc_movie
from clip_hitchhiker.downloads import COMPLETE_MARKER
from clip_hitchhiker.errors import DatasetError
from clip_hitchhiker.models.backends import load_model
from query_scoring import similarity_meanpooling, similarity_queryscoring
from tests import dataset_synthetic as data
from tests import synthetic

CPU = torch.device("cpu")
DEAD = "http://127.0.0.1:9/nothing-here"


# ---------------------------------------------------------------- the official metrics, transcribed
# ArrowLuo/CLIP4Clip metrics.py (tensor_text_to_video_metrics and tensor_video_to_text_sim come
# from Deferf/Experiments, Portillo-Quintero et al.'s code), written out again here from the
# source, independently of metrics.py.

def caption_tensor(sims, query_to_video, num_videos):
    """[Q, V] sims -> [V, K, V]: each video's captions (K the most any has), padded with -inf,
    as CLIP4Clip's eval_epoch reshapes the matrix for multi-sentence datasets."""
    groups = [[q for q in range(len(query_to_video)) if query_to_video[q] == v]
              for v in range(num_videos)]
    width = max(len(g) for g in groups)
    tensor = torch.full((num_videos, width, sims.shape[1]), -np.inf, dtype=torch.float64)
    for v, group in enumerate(groups):
        tensor[v, :len(group)] = sims[group].double()
    return tensor


def clip4clip_t2v(sim_tensor):
    stacked = sim_tensor.permute(1, 0, 2)
    first = torch.argsort(stacked, dim=-1, descending=True)
    second = torch.argsort(first, dim=-1, descending=False)
    ranks = torch.flatten(torch.diagonal(second, dim1=1, dim2=2))
    data_ = torch.flatten(torch.diagonal(sim_tensor, dim1=0, dim2=2))
    valid = ranks[~(torch.isinf(data_) | torch.isnan(data_))]
    metrics = {f"R{k}": float(torch.sum(valid < k) * 100 / len(valid)) for k in (1, 5, 10)}
    metrics["MedR"] = float(torch.median(valid + 1))
    metrics["MeanR"] = float(np.mean(valid.numpy() + 1))
    return metrics


def compute_metrics(x):
    """CLIP4Clip's compute_metrics: rows are queries, the diagonal their ground truth."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where(sx - d == 0)[1]
    metrics = {f"R{k}": float(np.sum(ind < k)) * 100 / len(ind) for k in (1, 5, 10)}
    metrics["MedR"] = float(np.median(ind) + 1)
    metrics["MeanR"] = float(np.mean(ind) + 1)
    return metrics


def clip4clip_v2t(sim_tensor):
    values, _ = torch.max(sim_tensor, dim=1, keepdim=True)
    return compute_metrics(torch.squeeze(values).T.numpy())


def assert_metrics(reported, expected):
    """Equal to the official figures, which CLIP4Clip's code computes in float32."""
    for key, value in expected.items():
        assert reported[key] == pytest.approx(value, abs=1e-5), (key, reported, expected)


def run(argv):
    return cli_module.main(cli_module.parse_args([str(a) for a in argv]))


def argv_for(tmp_path, model, *extra):
    return synthetic.cli_argv(tmp_path, tmp_path / "data", model, *extra)


def saved(path):
    return torch.load(path, weights_only=True)


def recomputed_sims(content, temperature):
    text, video = content["text_embeds"], content["video_embeds"]
    if temperature is None:
        return similarity_meanpooling(text, video)
    return similarity_queryscoring(text, video, temperature)


# ---------------------------------------------------------------- MSVD

@pytest.fixture(scope="module")
def msvd_servers(tmp_path_factory):
    """CLIP4Clip's msvd_data.zip and UT's YouTubeClips.tar, synthetic, served from 127.0.0.1."""
    root = tmp_path_factory.mktemp("msvd_source")
    frames = data.build_msvd(root)
    with synthetic.FileServer(synthetic.zip_bytes(root / "msvd_data")) as annotations, \
            synthetic.FileServer(data.tar_bytes(root / "YouTubeClips")) as videos:
        yield annotations.url, videos.url, frames


def test_msvd_end_to_end_every_caption_a_query(tmp_path, tiny_clip_files, msvd_servers,
                                               capsys):
    annotations_url, videos_url, frames = msvd_servers
    argv = argv_for(tmp_path, tiny_clip_files["torchscript"], "--dataset", "msvd",
                    "--msvd_url", annotations_url, "--msvd_videos_url", videos_url,
                    "--query_scoring_temp", "0.1", "1", "--save_embeddings", tmp_path / "e.pt")
    report = run(argv)
    captured = capsys.readouterr()
    assert "note: msvd test lists 3 videos (the official files give 670)" in captured.err
    content = saved(tmp_path / "e.pt")
    # The list's order; every caption of each, tokens joined by spaces, duplicates kept.
    assert content["video_ids"] == data.MSVD_TEST
    assert content["captions"] == ["a man plays guitar", "a man plays guitar",
                                   "someone is playing a guitar .", "a cat jumps",
                                   "the cat leaps up", "a woman slices an onion"]
    assert content["query_video_ids"] == [data.MSVD_TEST[i] for i in (0, 0, 0, 1, 1, 2)]
    assert report["counts"]["videos"] == 3 and report["counts"]["queries"] == 6
    assert {v: info["frames"] for v, info in content["decoded"].items()} == frames
    query_to_video = [0, 0, 0, 1, 1, 2]
    lines = captured.out.strip().splitlines()[1:]
    for line, result, temperature in zip(lines, report["results"], [None, 0.1, 1.0]):
        tensor = caption_tensor(recomputed_sims(content, temperature), query_to_video, 3)
        assert_metrics(result["t2v"], clip4clip_t2v(tensor))
        assert_metrics(result["v2t"], clip4clip_v2t(tensor))
        assert line.startswith(str({k: round(v, 3 if k == "MeanR" else 1)
                                    for k, v in result["t2v"].items()}))
    # Complete downloads: a second run asks no server and decodes nothing.
    again = run([DEAD if a in (annotations_url, videos_url) else a for a in argv])
    assert again["cache"]["hit"] and again["results"] == report["results"]


def test_msvd_reads_videos_from_a_video_root_and_reports_missing(tmp_path, tiny_clip_files,
                                                                 capsys):
    data_root = tmp_path / "data"
    data.build_msvd(data_root, video_root=tmp_path / "mine", missing=(data.MSVD_TEST[1],))
    (data_root / "msvd_data" / COMPLETE_MARKER).write_text("by hand\n")
    argv = argv_for(tmp_path, tiny_clip_files["torchscript"], "--dataset", "msvd",
                    "--video_root", tmp_path / "mine", "--msvd_url", DEAD,
                    "--msvd_videos_url", DEAD)
    with pytest.raises(DatasetError, match=r"1 of 3 videos of MSVD test are missing from .*mine, "
                                           r"e.g. \['bQJQGoJF7_k_162_169'\].*--skip_bad_videos"):
        run(argv)
    report = run(argv + ["--skip_bad_videos"])
    assert "1 of 3 videos are missing from" in capsys.readouterr().err
    assert report["counts"]["skipped_videos"] == 1 and report["counts"]["queries"] == 4


# ---------------------------------------------------------------- DiDeMo

@pytest.fixture(scope="module")
def didemo(tmp_path_factory):
    """test_data.json and the test split's list served from 127.0.0.1, and a folder of the
    videos (one missing). returns: (the URL options, the folder)."""
    videos = tmp_path_factory.mktemp("didemo") / "videos"
    annotations, test_list = data.build_didemo(videos)
    with synthetic.FileServer(annotations) as server, synthetic.FileServer(test_list) as listed:
        yield ["--didemo_url", server.url, "--didemo_test_list_url", listed.url], videos


def test_didemo_loader_concatenates_in_the_files_order(tmp_path):
    path = tmp_path / "test_data.json"
    path.write_text(json.dumps(data.DIDEMO_ENTRIES))
    paragraphs = load_didemo_paragraphs(path)
    assert list(paragraphs) == [data.DIDEMO_A, data.DIDEMO_B, data.DIDEMO_C, data.DIDEMO_D]
    # File order (CLIP4Clip's), not the order of the moments (A's second one starts first).
    assert paragraphs[data.DIDEMO_A] == ["the dog runs back", "a dog appears"]
    path.write_text(json.dumps([{"video": "x.mov", "description": " "}]))
    with pytest.raises(DatasetError, match="entry 1 needs a video and a non-empty description"):
        load_didemo_paragraphs(path)


def test_didemo_video_names(tmp_path):
    """The release's own name, the AWS script's (<name>.mp4 added), a converted copy's."""
    from clip_hitchhiker.datasets.didemo import didemo_file_names
    from clip_hitchhiker.datasets.local_files import find_video
    video = "10015567@N08_3655084291_d8b58466fa.mov"
    for stored in (video, f"{video}.mp4", "10015567@N08_3655084291_d8b58466fa.mp4"):
        (tmp_path / stored).write_bytes(b"")
        assert find_video(tmp_path, didemo_file_names(video)) == str(tmp_path / stored)
        (tmp_path / stored).unlink()
    assert find_video(tmp_path, didemo_file_names(video)) is None


def test_didemo_release_names_of_every_extension(tmp_path):
    """download_videos.py saves each video under the release's own name, whatever its
    extension (.mpg, .wmv, .3gp, .mts, .3g2, or none after a final '.': 147 of the real test
    split's 1,004 names); a converted copy of a name ending in '.' is <stem>.mp4."""
    from clip_hitchhiker.datasets.didemo import didemo_file_names
    from clip_hitchhiker.datasets.local_files import find_video
    for video in ("12644997@N04_5019157514_2789cc8573.3gp",
                  "11591650@N03_4661143575_5e8d46869b.mpg",
                  "12575752@N03_3831951420_7b18816031.wmv",
                  "33439178@N00_10001768095_65d489443c.mts",
                  "31667813@N00_3159450613_4a463646e0.3g2",
                  "10052357@N03_7585070382_5762149bfc."):
        (tmp_path / video).write_bytes(b"")
        assert find_video(tmp_path, didemo_file_names(video)) == str(tmp_path / video)
        (tmp_path / video).unlink()
    (tmp_path / "10052357@N03_7585070382_5762149bfc.mp4").write_bytes(b"")
    assert find_video(tmp_path, didemo_file_names("10052357@N03_7585070382_5762149bfc.")) == \
        str(tmp_path / "10052357@N03_7585070382_5762149bfc.mp4")


def test_didemo_test_split_is_the_list_not_the_whole_file(tmp_path):
    """The test split is Collaborative Experts' test_list.txt (1,004 videos), which CLIP4Clip
    intersects with test_data.json (1,037 videos): D, in the file only, is no query."""
    from clip_hitchhiker.datasets.didemo import load_didemo_test_split
    annotations, test_list = tmp_path / "test_data.json", tmp_path / "test_list.txt"
    annotations.write_text(json.dumps(data.DIDEMO_ENTRIES))
    test_list.write_text("".join(f"{v}\n" for v in data.DIDEMO_TEST_LIST))
    paragraphs = load_didemo_test_split(annotations, test_list)
    assert list(paragraphs) == data.DIDEMO_TEST_LIST
    assert paragraphs[data.DIDEMO_A] == ["the dog runs back", "a dog appears"]
    test_list.write_text(f"{data.DIDEMO_A}\nnot_a_didemo_video.mov\n")
    with pytest.raises(DatasetError, match=r"1 videos of .*test_list.txt have no description in "
                                           r".*test_data.json, e.g. \['not_a_didemo_video.mov'\]"):
        load_didemo_test_split(annotations, test_list)


def test_didemo_missing_videos_stop_the_run(tmp_path, tiny_clip_files, didemo):
    urls, videos = didemo
    with pytest.raises(DatasetError, match=r"1 of 3 videos of DiDeMo test are missing from "
                                           r".*videos, e.g. \['99999999@N00_1_abcdef0123.mov'\]"):
        run(argv_for(tmp_path, tiny_clip_files["torchscript"], "--dataset", "didemo",
                     "--video_root", videos, *urls))


@pytest.mark.parametrize("paragraph", ["concat", "mean"])
def test_didemo_paragraphs_end_to_end(tmp_path, tiny_clip_files, didemo, paragraph, capsys):
    urls, videos = didemo
    report = run(argv_for(tmp_path, tiny_clip_files["torchscript"], "--dataset", "didemo",
                          "--video_root", videos, *urls,
                          "--skip_bad_videos", "--paragraph", paragraph,
                          "--save_embeddings", tmp_path / "e.pt"))
    captured = capsys.readouterr()
    assert "1 of 3 videos are missing from" in captured.err
    assert all(line.endswith("[partial: 1 bad video(s) and 1 queries left out, not comparable "
                             "with the benchmark]") for line in captured.out.splitlines()[1:])
    content = saved(tmp_path / "e.pt")
    assert content["video_ids"] == [data.DIDEMO_A, data.DIDEMO_B]  # B found as its .mkv copy
    assert content["captions"] == ["the dog runs back a dog appears", "a woman waves",
                                   "camera pans left"]
    model = load_model("clip", str(tiny_clip_files["torchscript"]), CPU)
    with torch.inference_mode():
        if paragraph == "concat":
            expected = model.encode_text(content["captions"], CPU)
        else:
            unit = [e / e.norm(dim=1, keepdim=True) for e in (
                model.encode_text(["the dog runs back", "a dog appears"], CPU),
                model.encode_text(["a woman waves"], CPU),
                model.encode_text(["camera pans left"], CPU))]
            expected = torch.stack([u.mean(0) for u in unit])
    assert_close(content["text_embeds"], expected.float(), atol=1e-6, rtol=0)
    sims = recomputed_sims({**content, "text_embeds": content["text_embeds"][:2]}, 0.1)
    assert_metrics(report["results"][1]["t2v"], compute_metrics(sims.numpy()))
    assert_metrics(report["results"][1]["v2t"], compute_metrics(sims.numpy().T))


# ---------------------------------------------------------------- LSMDC

def test_lsmdc_clip_names_and_the_test_file(tmp_path):
    assert lsmdc_movie("0001_American_Beauty_00.00.51.926-00.00.54.129") == \
        "0001_American_Beauty"
    assert lsmdc_movie("3034_IDES_OF_MARCH_00.00.59.549-00.01.01.622") == "3034_IDES_OF_MARCH"
    folder = tmp_path / "LSMDC"
    data.build_lsmdc(folder, folder / "videos")
    assert load_lsmdc_queries(folder / "LSMDC16_challenge_1000_publictect.csv") == \
        data.LSMDC_LINES
    bad = tmp_path / "bad.csv"
    bad.write_text("0001_A_00.00.01.000-00.00.02.000\t1\t2\tno sentence\n")
    with pytest.raises(DatasetError, match=r"bad.csv, line 1: expected 6 tab-separated fields"):
        load_lsmdc_queries(bad)


def test_lsmdc_needs_the_registered_files(tmp_path, tiny_clip_files):
    with pytest.raises(DatasetError, match=r"missing .*LSMDC16_challenge_1000_publictect.csv; "
                                           r"LSMDC needs registration with MPII: ask for access "
                                           r"at https://sites.google.com/site/describingmovies"):
        run(argv_for(tmp_path, tiny_clip_files["torchscript"], "--dataset", "lsmdc"))


def test_lsmdc_end_to_end_from_the_default_folders(tmp_path, tiny_clip_files, capsys):
    folder = tmp_path / "data" / "LSMDC"
    data.build_lsmdc(folder, folder / "videos")
    built, _ = build_dataset(None, 4, dataset="lsmdc", data_root=tmp_path / "data")
    clips = [clip for clip, _ in data.LSMDC_LINES]
    assert built.video_ids == clips
    assert built.video_paths == [
        str(folder / "videos" / "0001_American_Beauty" / f"{clips[0]}.avi"),
        str(folder / "videos" / "3034_IDES_OF_MARCH" / f"{clips[1]}.avi"),
        str(folder / "videos" / f"{clips[2]}.avi")]  # a flat folder is read too
    report = run(argv_for(tmp_path, tiny_clip_files["torchscript"], "--dataset", "lsmdc",
                          "--save_embeddings", tmp_path / "e.pt"))
    content = saved(tmp_path / "e.pt")
    assert content["captions"] == [s for _, s in data.LSMDC_LINES]
    assert content["query_video_ids"] == clips
    for result, temperature in zip(report["results"], [None, 0.1]):
        sims = recomputed_sims(content, temperature).numpy()
        assert_metrics(result["t2v"], compute_metrics(sims))
        assert_metrics(result["v2t"], compute_metrics(sims.T))
    assert "note: lsmdc test lists 3 videos (the official files give 1,000), 3 queries " \
           "(the official files give 1,000)" in capsys.readouterr().err


# ---------------------------------------------------------------- VATEX

@pytest.fixture
def vatex(tmp_path):
    payload = data.build_vatex(tmp_path / "data" / "VATEX", tmp_path / "data" / "VATEX" / "videos")
    with synthetic.FileServer(payload) as server:
        yield server.url


def test_vatex_end_to_end_hgr_test_split(tmp_path, tiny_clip_files, vatex):
    report = run(argv_for(tmp_path, tiny_clip_files["torchscript"], "--dataset", "vatex",
                          "--vatex_url", vatex, "--save_embeddings", tmp_path / "e.pt"))
    content = saved(tmp_path / "e.pt")
    assert content["video_ids"] == data.VATEX_TEST  # HGR's list, not the validation file
    assert content["captions"] == ["Two dogs play.", "A man juggles balls.",
                                   "Someone juggles three balls in a park.", "A girl sings.",
                                   "A child sings a song.", "A little girl is singing."]
    assert report["counts"]["queries"] == 6
    query_to_video = [0, 1, 1, 2, 2, 2]
    for result, temperature in zip(report["results"], [None, 0.1]):
        tensor = caption_tensor(recomputed_sims(content, temperature), query_to_video, 3)
        assert_metrics(result["t2v"], clip4clip_t2v(tensor))
        assert_metrics(result["v2t"], clip4clip_v2t(tensor))


def test_vatex_test_list_must_name_validation_videos(tmp_path, tiny_clip_files, vatex):
    (tmp_path / "data" / "VATEX" / "test_list.txt").write_text("not_a_vatex_id\n")
    with pytest.raises(DatasetError, match=r"1 videos of .*test_list.txt are not in VATEX's "
                                           r"validation set, e.g. \['not_a_vatex_id'\]"):
        run(argv_for(tmp_path, tiny_clip_files["torchscript"], "--dataset", "vatex",
                     "--vatex_url", vatex))


def test_a_download_that_is_not_the_annotation_file_is_set_aside(tmp_path, tiny_clip_files):
    data.build_vatex(tmp_path / "data" / "VATEX", tmp_path / "data" / "VATEX" / "videos")
    with synthetic.FileServer(b"<html>rate limited</html>") as server:
        with pytest.raises(DatasetError, match=r"did not give the expected file .*is not JSON.*"
                                               r"moved to .*vatex_validation_v1.0.json.corrupt"):
            run(argv_for(tmp_path, tiny_clip_files["torchscript"], "--dataset", "vatex",
                         "--vatex_url", server.url))
    folder = tmp_path / "data" / "VATEX"
    assert not (folder / "vatex_validation_v1.0.json").exists()
    assert (folder / "vatex_validation_v1.0.json.corrupt").read_bytes() == \
        b"<html>rate limited</html>"


@pytest.mark.parametrize("dataset, annotation", [
    ("didemo", "DiDeMo/test_data.json"), ("lsmdc", "LSMDC/LSMDC16_challenge_1000_publictect.csv"),
    ("vatex", "VATEX/test_list.txt"), ("kinetics400", "Kinetics400/val.csv")])
def test_an_annotation_path_that_is_not_a_readable_file_is_one_line(tmp_path, dataset,
                                                                    annotation):
    """A folder (or a file this user may not read) where an annotation file should be: a
    DatasetError naming it, which the CLI prints as one line, not an OSError's traceback."""
    (tmp_path / "data" / annotation).mkdir(parents=True)
    (tmp_path / "videos").mkdir()
    with pytest.raises(DatasetError, match=rf"cannot read .*{re.escape(annotation)} \(Is a "
                                           r"directory\); it should be .* this user can read"):
        build_dataset(None, 4, dataset=dataset, data_root=tmp_path / "data",
                      video_root=str(tmp_path / "videos"), download=False)


def test_video_root_given_for_a_dataset_without_videos_of_its_own(tmp_path):
    """The help's promise: a dataset's videos come from --video_root, else its folder under
    --data_root; with neither, the message says what to pass."""
    folder = tmp_path / "data" / "LSMDC"
    data.build_lsmdc(folder, tmp_path / "elsewhere")
    built, _ = build_dataset(None, 4, dataset="lsmdc", data_root=tmp_path / "data",
                             video_root=str(tmp_path / "elsewhere"))
    assert built.video_root == str(tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=re.escape(
            "LSMDC videos: no folder of them (neither --video_root nor the dataset's folder under "
            "--data_root); LSMDC needs registration with MPII") + ".*then pass --video_root"):
        build_dataset(None, 4, dataset="lsmdc", data_root=tmp_path / "data")


def test_a_video_root_that_is_not_a_folder_is_named(tmp_path):
    """MSVD's videos have a public host: the message says how to get them, and does not claim
    otherwise."""
    data.build_msvd(tmp_path / "data")
    with pytest.raises(DatasetError) as error:
        build_dataset(None, 4, dataset="msvd", data_root=tmp_path / "data", download=False,
                      video_root=str(tmp_path / "nowhere"))
    assert str(error.value) == (
        f"MSVD videos: {tmp_path / 'nowhere'} is not a folder; download "
        "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar, then pass "
        "--video_root, a folder of them")


def test_activitynet_reads_its_default_video_folder(tmp_path):
    """Without --video_root, ActivityNet's videos are read from DATA_ROOT/ActivityNet/videos
    (where the suite reads them); the cache key names the folder."""
    data_root = tmp_path / "data"
    synthetic.build_activitynet(tmp_path / "captions", data_root / "ActivityNet" / "videos")
    with synthetic.FileServer(synthetic.zip_contents(tmp_path / "captions")) as server:
        built, dataset_id = build_dataset(None, 4, dataset="activitynet", data_root=data_root,
                                          urls={"activitynet": server.url}, check_files=False)
    assert built.video_ids == ["v_aaa", "v_bbb", "v_ccc", "v_ddd"]
    assert built.missing == ["v_ddd"]
    assert dataset_id["video_root"] == str((data_root / "ActivityNet" / "videos").resolve())
