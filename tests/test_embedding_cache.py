"""The embedding cache in one process: keys, paths, atomic saves, safe loads."""
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from clip_hitchhiker.embedding_cache import (cache_content, cache_key, cache_path,
                                             load_cached_embeddings, save_embeddings,
                                             write_atomically, write_json)

KEY_ARGS = dict(model_id="sha256:ab", model_dtype=torch.float32, num_frames=4,
                dataset_id={"msrvtt_split": "jsfusion", "queries_sha256": "cd"},
                preprocess_id="bicubic 224")


def content():
    g = torch.Generator().manual_seed(0)
    return cache_content(text_embeds=torch.randn(3, 8, generator=g),
                         video_embeds=torch.randn(2, 4, 8, generator=g),
                         video_ids=["a", "b"], query_video_ids=["a", "b", "b"],
                         captions=["x", "y", "z"], skipped=[],
                         decoded={v: {"frames": 9, "indices": [1, 3, 5, 7], "resolution": [4, 6]}
                                  for v in "ab"})


@pytest.mark.parametrize("field,value", [
    ("model_id", "sha256:ff"), ("model_dtype", torch.float16), ("num_frames", 5),
    ("dataset_id", {"msrvtt_split": "miech", "queries_sha256": "cd"}),
    ("preprocess_id", "bicubic antialias 224")])
def test_every_field_changes_the_key_and_path(field, value):
    key = cache_key(**KEY_ARGS)
    other = cache_key(**{**KEY_ARGS, field: value})
    assert other != key
    assert cache_path("c", other) != cache_path("c", key)


def test_key_is_canonical_and_path_is_its_digest():
    reordered = {**KEY_ARGS, "dataset_id": {"queries_sha256": "cd", "msrvtt_split": "jsfusion"}}
    key = cache_key(**KEY_ARGS)
    assert cache_key(**reordered) == key
    assert json.loads(key)["num_frames"] == 4
    path = cache_path("somewhere", key)
    assert path.parent == Path("somewhere") and path.name.startswith("embeddings-")
    assert path == cache_path("somewhere", key)


def test_round_trip(tmp_path):
    key = cache_key(**KEY_ARGS)
    saved = content()
    save_embeddings(tmp_path / "sub" / "e.pt", saved, key)
    loaded = load_cached_embeddings(tmp_path / "sub" / "e.pt", key)
    assert_close(loaded["video_embeds"], saved["video_embeds"], atol=0, rtol=0)
    assert loaded["captions"] == saved["captions"] and loaded["key"] == key
    assert load_cached_embeddings(tmp_path / "missing.pt", key) is None


def test_other_settings_are_stale(tmp_path):
    save_embeddings(tmp_path / "e.pt", content(), cache_key(**KEY_ARGS))
    with pytest.warns(UserWarning, match="stale embedding cache"):
        assert load_cached_embeddings(tmp_path / "e.pt", cache_key(**{**KEY_ARGS,
                                                                     "num_frames": 8})) is None


@pytest.mark.parametrize("damage", ["truncate", "shapes", "ids", "not_a_dict", "decoded"])
def test_truncated_or_inconsistent_entries_are_ignored(tmp_path, damage):
    key = cache_key(**KEY_ARGS)
    path = tmp_path / "e.pt"
    bad = content()
    if damage == "shapes":
        bad["video_embeds"] = torch.zeros(2, 4, 7)
    elif damage == "ids":
        bad["video_ids"] = ["a"]
    elif damage == "decoded":
        del bad["decoded"]["b"]
    save_embeddings(path, bad, key)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "not_a_dict":
        torch.save([1, 2], path)
    with pytest.warns(UserWarning, match="unreadable embedding cache"):
        assert load_cached_embeddings(path, key) is None


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_tampered_entry_runs_no_code(tmp_path):
    payload = _RunsCode()
    payload.target = tmp_path / "pwned"
    path = tmp_path / "e.pt"
    torch.save({**content(), "key": cache_key(**KEY_ARGS), "extra": payload}, path,
               pickle_module=pickle)
    assert not payload.target.exists()
    with pytest.warns(UserWarning, match="unreadable embedding cache"):
        assert load_cached_embeddings(path, cache_key(**KEY_ARGS)) is None
    assert not payload.target.exists()


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"a": 1})

    def fail(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_written_files_follow_the_umask(tmp_path):
    import os
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {})
        save_embeddings(tmp_path / "e.pt", content(), "k")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "e.pt").stat().st_mode & 0o777 == 0o640


def test_fingerprint_follows_size_and_modification_time(tmp_path):
    import os

    from clip_hitchhiker.embedding_cache import fingerprint_files
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x" * 10)
    first = fingerprint_files([video, tmp_path / "missing.mp4"])
    assert fingerprint_files([video, tmp_path / "missing.mp4"]) == first
    os.utime(video, ns=(1, 2))
    touched = fingerprint_files([video, tmp_path / "missing.mp4"])
    assert touched != first
    video.write_bytes(b"y" * 11)
    os.utime(video, ns=(1, 2))
    assert fingerprint_files([video, tmp_path / "missing.mp4"]) not in (first, touched)


def test_a_write_reaches_the_disk_before_its_name_then_the_folder(tmp_path, disk_order):
    """After a power cut the path holds the old content or the whole new one: the temporary
    file is fsynced before os.replace gives it the name, and the folder's entries after."""
    path = tmp_path / "report.json"
    write_json(path, {"a": 1})
    (_, temporary), (_, moved, named), (_, folder) = disk_order
    assert (moved, named, folder) == (temporary, str(path), str(tmp_path))
    assert Path(temporary).name.startswith(".report.json.")
    assert json.loads(path.read_text()) == {"a": 1}
