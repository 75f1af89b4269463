"""search_videos.py and VideoIndex at their edges: queries and settings refused in one line
before anything is loaded, embeddings of the wrong width or not finite, `--stage1` on an index
that is up to date, and the printed JSON's rounding (the API keeps full precision)."""
import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch

import search_videos
from clip_hitchhiker.errors import QueryError
from clip_hitchhiker.search import index_format as fmt
from clip_hitchhiker.search.video_index import VideoIndex
from clip_hitchhiker.synthetic_data import write_noise_video
from tests import search_synthetic
from tests.test_search_videos import cli_error, run

VIDEO_FPS = 3  # frame times 1/3 s apart: float noise (0.3333333333333333) in every time


@pytest.fixture(scope="module")
def thirds(tmp_path_factory):
    """The colour CLIP and an index of two 10-frame videos at 3 fps (3.333... s): red in frames
    3..6, blue in frames 0..2. Sampled at 1 fps: frames 2, 5, 8 and 9 (2/3, 5/3, 8/3 and 3 s)."""
    root = tmp_path_factory.mktemp("edges")
    model = search_synthetic.save_colour_clip(root / "colour.pt")
    (root / "videos").mkdir()
    for seed, (name, frames) in enumerate((("red", range(3, 7)), ("blue", range(0, 3)))):
        colour = search_synthetic.SEARCH_COLOURS[name]
        write_noise_video(root / "videos" / f"{name}.mp4", 10, {i: colour for i in frames},
                          np.random.default_rng(seed), fps=VIDEO_FPS)
    index = root / "index"
    run("index", root / "videos", "--index", index, "--model", model)
    return {"root": root, "model": model, "index": index}


# ----------------------------------------------------------------------------------------------
# The API's edge


def test_one_string_is_one_query(thirds):
    index = VideoIndex.open(thirds["index"])
    one = index.search("a red video", k=2)
    assert len(one) == 1 and one[0]["query"] == "a red video"
    assert one == index.search(["a red video"], k=2)


@pytest.mark.parametrize("texts,message", [
    ([""], r"query 1 \(''\) is empty or only whitespace; give some text to search for"),
    (["a red video", " \t\n"], r"query 2 \(' \\t\\n'\) is empty or only whitespace"),
    (["a red video", "\u200b"], r"query 2 \('\\u200b'\) holds only invisible characters "
                                r"\(zero-width, format or control\); give some text to search for"),
    (["\u2060\u200d \u00ad"], r"query 1 \('.*'\) holds only invisible characters"),
    (["\ufeff\x00"], r"query 1 \('.*'\) holds only invisible characters"),
    (["a red video", None], "query 2 is not text but NoneType"),
    ([b"a red video"], "query 1 is not text but bytes"),
    (42, "queries must be a list of strings"),
])
def test_empty_and_non_text_queries_are_refused_before_the_model_loads(thirds, texts, message):
    index = VideoIndex.open(thirds["index"])
    with pytest.raises(QueryError, match=message):
        index.search(texts)
    assert index._model is None  # refused before loading anything


def test_a_query_the_tokenizer_drops_whole_is_refused_before_it_is_encoded(thirds, monkeypatch):
    """U+FFFC (the object replacement character) shows a box, so it passes the character check,
    but CLIP's text cleaning (ftfy) drops it: the query would be the start and end tokens alone.
    Refused by the index's own tokenizer, before any text is encoded."""
    index = VideoIndex.open(thirds["index"])
    model = index._loaded_model("cpu")
    assert model.tokenless(["a red video", "\ufffc", "\ufffc \ufffc", "\u200b", ""]) == \
        [False, True, True, False, True]
    encoded = []
    monkeypatch.setattr(model.module, "encode_text", lambda tokens: encoded.append(tokens))
    with pytest.raises(QueryError, match=r"^query 2 \('\ufffc'\) holds no token once tokenised "
                                         r"by the index's model \(.*colour.pt\), whose tokenizer "
                                         r"drops every character of it; give some text to search "
                                         r"for$"):
        index.search(["a red video", "\ufffc"])
    assert encoded == []


@pytest.mark.parametrize("settings,message", [
    (dict(k=0), "k must be an integer >= 1, got 0"),
    (dict(k=-1), "k must be an integer >= 1, got -1"),
    (dict(k=2.5), "k must be an integer >= 1, got 2.5"),
    (dict(k=True), "k must be an integer >= 1, got True"),
    (dict(k="3"), "k must be an integer >= 1, got '3'"),
    (dict(candidates=0), "candidates must be an integer >= 1"),
    (dict(temperature=0), "temperature must be a number > 0"),
    (dict(temperature=float("nan")), "temperature must be a number > 0"),
    (dict(mass=0), r"mass must be in \(0, 1\]"),
    (dict(mass=1.5), r"mass must be in \(0, 1\]"),
    (dict(aggregate="max"), "aggregate must be one of"),
    (dict(nprobe=0), "nprobe must be an integer >= 1, got 0"),
    (dict(nprobe=-1), "nprobe must be an integer >= 1, got -1"),
    (dict(nprobe="8"), "nprobe must be an integer >= 1, got '8'"),
])
def test_bad_settings_are_refused(thirds, settings, message):
    index = VideoIndex.open(thirds["index"])
    text = np.eye(32, dtype=np.float32)[:1]
    for exact in (False, True):
        with pytest.raises(QueryError, match=message):
            index.search_embeddings(text, exact=exact, **settings)
    with pytest.raises(QueryError, match=message):
        index.search(["a red video"], **settings)
    assert index._model is None
    assert issubclass(QueryError, ValueError)
    # numpy integers are integers
    assert len(index.search_embeddings(text, k=np.int64(1))[0]) == 1


@pytest.mark.parametrize("bad_row,message", [
    (np.full(32, np.nan), r"row\(s\) \[1\] hold NaN or inf or are all zero"),
    (np.r_[np.inf, np.zeros(31)], r"row\(s\) \[1\] hold NaN or inf or are all zero"),
    (np.zeros(32), r"row\(s\) \[1\] hold NaN or inf or are all zero"),
])
def test_embeddings_that_are_not_finite_or_zero_are_refused(thirds, bad_row, message):
    index = VideoIndex.open(thirds["index"])
    embeds = np.stack([np.eye(32)[0], bad_row]).astype(np.float32)
    for exact in (False, True):
        with pytest.raises(QueryError, match=message):
            index.search_embeddings(embeds, exact=exact)


def test_embeddings_of_any_scale_dtype_or_container_give_the_same_hits(thirds):
    """Cosines ignore scale: rows of 1e30 or 1e-30 (whose squares leave float32), float64 rows
    past float32's range, a tensor that requires grad and nested lists all give the hits of the
    text model's own rows, to the bit, in both stages."""
    index = VideoIndex.open(thirds["index"])
    red = index.encode_texts(["a red video"])
    for exact in (False, True):
        expected = index.search_embeddings(red, k=2, exact=exact)
        assert expected[0][0]["video"].endswith("red.mp4")
        for same in (red * 2.0 ** 100, red * 2.0 ** -100, red.double() * 2.0 ** 700,
                     red.double() * 2.0 ** -700, red.clone().requires_grad_(), red.tolist()):
            assert index.search_embeddings(same, k=2, exact=exact) == expected
    with pytest.raises(QueryError, match="text_embeds must be real numbers, got torch.complex64"):
        index.search_embeddings(red.to(torch.complex64))


def test_peak_frame_is_the_frame_of_the_peak_on_a_near_tie(thirds):
    """Weights that tie to within rounding (1e-9 of the total): the peak is the earlier frame,
    and peak_frame names that frame, not the one that rounding made larger."""
    index = VideoIndex.open(thirds["index"])
    times = index.table["frame_times"][0]
    weights = np.array([0.1, 0.45, 0.45 + 4e-10, 0.0])
    hit = index._hit(0, 0.5, weights, 0.5)
    assert (hit["peak_frame"], hit["peak"]) == (1, times[1])


@pytest.mark.parametrize("shape", [(1, 31), (1, 33), (32,), (1, 1, 32)])
def test_a_wrong_embedding_width_is_a_clear_value_error(thirds, shape):
    index = VideoIndex.open(thirds["index"])
    with pytest.raises(ValueError, match=r"text_embeds must be \[T, 32\] \(this index's "
                                         r"embedding width is 32\), got shape " +
                                         repr(shape).replace("(", r"\(").replace(")", r"\)")):
        index.search_embeddings(np.ones(shape, dtype=np.float32))


# ----------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize("queries,message", [
    ([""], "error: query 1 ('') is empty or only whitespace; give some text to search for"),
    (["a red video", "   "], "error: query 2 ('   ') is empty or only whitespace"),
    (["\u200b"], "error: query 1 ('\\u200b') holds only invisible characters (zero-width, "
                 "format or control); give some text to search for"),
    (["a red video", "\ufffc"], "error: query 2 ('\ufffc') holds no token once tokenised by "
                                "the index's model ("),
])
def test_empty_queries_are_refused_in_one_line(thirds, capsys, queries, message):
    code, err = cli_error(capsys, "search", "--index", thirds["index"], *queries)
    assert code == 1 and err.count("\n") == 1 and err.startswith(message)


def test_blank_lines_of_a_queries_file_are_skipped_and_a_blank_file_is_refused(thirds, tmp_path,
                                                                                 capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("  \n\t\n")
    code, err = cli_error(capsys, "search", "--index", thirds["index"], "--queries", queries)
    assert code == 1 and err == f"error: --queries {queries} holds no query\n"
    queries.write_text("\n a blue video \n   \n")
    report = run("search", "--index", thirds["index"], "--queries", queries)
    assert [q["query"] for q in report["queries"]] == ["a blue video"]


def test_a_queries_file_without_end_is_refused_in_one_line(thirds, tmp_path, capsys,
                                                            monkeypatch):
    """/dev/zero (or a video given by mistake) is read up to a limit, not into all the memory;
    a pipe is read like a file."""
    monkeypatch.setattr(search_videos, "QUERIES_FILE_LIMIT", 1000)
    endless = "/dev/zero"
    code, err = cli_error(capsys, "search", "--index", thirds["index"], "--queries", endless)
    assert code == 1 and err == (f"error: --queries {endless} holds more than 0 MB; give a text "
                                 "file of queries, one a line (split a longer one)\n")
    longer = tmp_path / "longer.txt"
    longer.write_text("a red video\n" * 84)  # 1008 bytes
    code, err = cli_error(capsys, "search", "--index", thirds["index"], "--queries", longer)
    assert code == 1 and err.startswith(f"error: --queries {longer} holds more than")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_text("a blue video\n"))
    writer.start()
    report = run("search", "--index", thirds["index"], "--queries", pipe, "-k", 1)
    writer.join()
    assert [q["query"] for q in report["queries"]] == ["a blue video"]


def test_stage1_asked_of_an_up_to_date_index_is_rebuilt_and_committed(thirds, tmp_path, capsys):
    index = tmp_path / "index"
    shutil.copytree(thirds["index"], index)
    before = VideoIndex.open(index)
    assert before.manifest["stage1"]["type"] == "flat"
    queries = ["a red video", "a blue video"]
    expected = before.search(queries, k=2, exact=True)
    capsys.readouterr()
    run("index", thirds["root"] / "videos", "--index", index, "--model", thirds["model"],
        "--stage1", "hnsw")
    assert capsys.readouterr().out.rstrip().endswith(
        "2 videos, 8 frames; stage 1 rebuilt as hnsw (was flat)")
    after = VideoIndex.open(index)
    assert after.manifest["stage1"]["type"] == after.manifest["stage1"]["requested"] == "hnsw"
    assert after.manifest["generation"] == before.manifest["generation"] + 1
    import faiss
    assert type(faiss.downcast_index(after.stage1.index)).__name__ == "IndexHNSWFlat"
    assert after.manifest["stage1"]["params"] == {"M": 32, "segment_bits": 32}
    assert after.stage1.ntotal == 2
    assert after.search(queries, k=2) == expected
    # Asked again, it is up to date: nothing is committed.
    run("index", thirds["root"] / "videos", "--index", index, "--model", thirds["model"],
        "--stage1", "hnsw")
    assert json.loads((index / fmt.MANIFEST).read_text())["generation"] == \
        after.manifest["generation"]
    assert "stage 1" not in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Printed JSON and info


def test_printed_json_rounds_times_and_scores_and_the_api_keeps_full_precision(thirds, capsys):
    capsys.readouterr()
    report = run("search", "--index", thirds["index"], "a red video", "a blue video", "-k", 2,
                 "--json")
    printed = json.loads(capsys.readouterr().out)
    api = VideoIndex.open(thirds["index"]).search(["a red video", "a blue video"], k=2)
    assert report["queries"] == api  # main returns what the API gives, unrounded
    best = api[0]["hits"][0]
    assert best["duration"] != round(best["duration"], 3)
    assert best["score"] != round(best["score"], 6)
    for printed_query, query in zip(printed["queries"], api):
        for printed_hit, hit in zip(printed_query["hits"], query["hits"], strict=True):
            assert printed_hit == {**hit, "score": round(hit["score"], 6),
                                   **{key: round(hit[key], 3)
                                      for key in ("start", "end", "peak", "duration")}}
    red = printed["queries"][0]["hits"][0]
    # Of the sampled frames only 5/3 s is red: it holds nearly all the weight, so the moment is
    # its cell, from the midpoint with 2/3 s to the midpoint with 8/3 s.
    assert (red["start"], red["peak"], red["end"], red["duration"]) == (1.167, 1.667, 2.167,
                                                                        3.333)
    assert red["video"].endswith("red.mp4") and red["score"] == round(best["score"], 6)


def test_info_lists_frame_times_only_when_asked(thirds, capsys):
    capsys.readouterr()
    info = run("info", "--index", thirds["index"], "--json")
    printed = json.loads(capsys.readouterr().out)
    assert "times" not in printed["videos"][0] and "times" not in info["videos"][0]
    assert printed["videos"][0]["duration"] == 3.333
    run("info", "--index", thirds["index"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [f"  {thirds['root'].resolve() / 'videos' / name}.mp4  3.33 s, "
                          "4 frames" for name in ("blue", "red")]
    info = run("info", "--index", thirds["index"], "--json", "--times")
    printed = json.loads(capsys.readouterr().out)
    assert printed["videos"][0]["times"] == [0.667, 1.667, 2.667, 3.0]
    # Full precision in Python: the stored times.
    stored = VideoIndex.open(thirds["index"]).table["frame_times"][0].tolist()
    assert info["videos"][0]["times"] == stored != printed["videos"][0]["times"]
    run("info", "--index", thirds["index"], "--times")
    assert capsys.readouterr().out.splitlines()[-1].endswith("4 frames at 0.667 1.667 2.667 3")
