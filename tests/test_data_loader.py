import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from torch.utils.data import DataLoader

import data_loader
from data_loader import (CSVDataset, DatasetError, FramePreprocess, MSRVTTDataset, VideoDecodeError,
                         load_msrvtt_split, read_video_decord, read_video_frames,
                         sample_frame_indices)
from tests import synthetic

# ---------------------------------------------------------------- splits

def test_jsfusion_split_rows(msrvtt_root, msrvtt_source):
    _, info = msrvtt_source
    split = load_msrvtt_split(msrvtt_root, "jsfusion")
    test_ids = sorted(info["lists"]["jsfusion"])
    expected = [(v, info["captions"][v][info["caption_index"][v]]) for v in test_ids]
    assert list(split.columns) == ["video_id", "caption"]
    assert list(split.itertuples(index=False, name=None)) == expected


@pytest.mark.parametrize("split", ["miech", "full-test"])
def test_all_caption_split_rows(msrvtt_root, msrvtt_source, split):
    _, info = msrvtt_source
    rows = list(load_msrvtt_split(msrvtt_root, split).itertuples(index=False, name=None))
    expected = [(v, c) for v in sorted(info["lists"][split]) for c in info["captions"][v]]
    assert rows == expected
    assert sum(1 for v, _ in rows if v == "video7011") == 2  # the short video: one caption fewer


def test_unknown_split(msrvtt_root):
    with pytest.raises(ValueError, match="split must be one of"):
        load_msrvtt_split(msrvtt_root, "train")


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_pickle_that_would_run_code_is_refused(msrvtt_root, tmp_path):
    data_root = tmp_path / "data"
    shutil.copytree(msrvtt_root / "MSRVTT", data_root / "MSRVTT")
    payload = _RunsCode()
    payload.target = tmp_path / "pwned"
    pkl = data_root / "MSRVTT" / "high-quality" / "structured-symlinks" / \
        "jsfusion_val_caption_idx.pkl"
    pkl.write_bytes(pickle.dumps({"video7010": payload}))
    with pytest.raises(DatasetError, match="refusing to load pathlib"):
        load_msrvtt_split(data_root, "jsfusion")
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- frames

@pytest.mark.parametrize("n,f,expected", [
    (10, 2, [2, 7]),          # edges 0,5,10
    (10, 4, [1, 3, 6, 8]),    # edges 0,2,5,7,10
    (3, 5, [0, 0, 1, 1, 2]),  # edges 0,0,1,1,2,3: fewer frames than asked repeat
    (1, 3, [0, 0, 0]),
    (7, 1, [3]),
])
def test_sample_frame_indices_hand_computed(n, f, expected):
    assert sample_frame_indices(n, f) == expected


def test_sample_frame_indices_equals_release_rule():
    for n in (1, 2, 5, 17, 100, 451):
        for f in (1, 4, 16, 120):
            edges = np.linspace(start=0, stop=n, num=f + 1).astype(int)
            assert sample_frame_indices(n, f) == [(a + b) // 2 for a, b in zip(edges[:-1],
                                                                                edges[1:])]


@pytest.mark.parametrize("n,f", [(0, 4), (5, 0)])
def test_sample_frame_indices_bad_arguments(n, f):
    with pytest.raises(ValueError):
        sample_frame_indices(n, f)


@pytest.mark.parametrize("length,num_frames", [(5, 4), (23, 4), (40, 16), (7, 12), (1, 3)])
def test_decoded_frames_are_the_sampled_ones(tmp_path, length, num_frames):
    path = tmp_path / "v.mp4"
    synthetic.write_index_video(path, length)
    frames = read_video_frames(path, num_frames)
    assert frames.dtype == torch.uint8 and tuple(frames.shape) == (num_frames, 3, 48, 64)
    assert synthetic.decode_frame_indices(frames) == sample_frame_indices(length, num_frames)
    as_float = read_video_decord(path, num_frames)
    assert as_float.dtype == torch.float32 and 0 <= as_float.min() and as_float.max() <= 1
    assert_close(as_float, frames.float() / 255)


def test_grayscale_and_odd_size_videos(tmp_path):
    synthetic.write_index_video(tmp_path / "gray.mp4", 20, gray=True)
    gray = read_video_frames(tmp_path / "gray.mp4", 4)
    assert tuple(gray.shape) == (4, 3, 48, 64)  # decord gives RGB
    assert synthetic.decode_frame_indices(gray, gray=True) == [i % 16 for i in
                                                               sample_frame_indices(20, 4)]
    synthetic.write_index_video(tmp_path / "odd.mp4", 9, width=65, height=49)
    odd = read_video_frames(tmp_path / "odd.mp4", 3)
    assert tuple(odd.shape) == (3, 3, 49, 65)
    assert synthetic.decode_frame_indices(odd) == sample_frame_indices(9, 3)


def test_bad_videos_raise_video_decode_error(tmp_path):
    with pytest.raises(VideoDecodeError, match="not found: .*missing.mp4"):
        read_video_frames(tmp_path / "missing.mp4", 4)
    (tmp_path / "junk.mp4").write_bytes(b"\x00not a video" * 100)
    with pytest.raises(VideoDecodeError, match="junk.mp4"):
        read_video_frames(tmp_path / "junk.mp4", 4)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty.mp4"):
        read_video_frames(tmp_path / "empty.mp4", 4)


def test_zero_frame_video(tmp_path, monkeypatch):
    import decord

    class NoFrames:
        def __init__(self, *args, **kwargs):
            pass

        def __len__(self):
            return 0

    (tmp_path / "zero.mp4").write_bytes(b"x")
    monkeypatch.setattr(decord, "VideoReader", NoFrames)
    with pytest.raises(VideoDecodeError, match="no frames: .*zero.mp4"):
        read_video_frames(tmp_path / "zero.mp4", 4)


CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
# (height, width) of the frames, the resized size and the crop's corner, worked out by hand:
# the shorter side becomes 224, the longer int(224 * long / short); the corner is
# round((resized - 224) / 2).
FRAME_SIZES = [
    ((240, 320), (224, 298), (0, 37)),     # landscape: 224 * 320 / 240 = 298.7
    ((320, 240), (298, 224), (37, 0)),     # portrait
    ((224, 224), (224, 224), (0, 0)),      # square at the resolution: not resized
    ((100, 150), (224, 336), (0, 56)),     # upscaling
    ((1080, 1920), (224, 398), (0, 87)),   # 1080p: 224 * 1920 / 1080 = 398.2
]


def reference_preprocess(frames, resized, corner, antialias):
    """CLIP's preprocessing written out with F.interpolate, sizes given by hand."""
    frames = frames.float() / 255
    if tuple(frames.shape[-2:]) != resized:
        frames = torch.nn.functional.interpolate(frames, size=resized, mode="bicubic",
                                                 align_corners=False, antialias=antialias)
    top, left = corner
    return (frames[..., top:top + 224, left:left + 224] - CLIP_MEAN) / CLIP_STD


@pytest.mark.parametrize("size,resized,corner", FRAME_SIZES)
@pytest.mark.parametrize("antialias", [False, True])
def test_preprocess_equals_reference(size, resized, corner, antialias):
    import clip
    frames = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    got = FramePreprocess(clip.clip._transform(224), antialias=antialias)(frames)
    assert tuple(got.shape) == (2, 3, 224, 224) and got.dtype == torch.float32
    assert_close(got, reference_preprocess(frames, resized, corner, antialias), atol=1e-6,
                 rtol=0)
    other = FramePreprocess(clip.clip._transform(224), antialias=not antialias)(frames)
    if size == resized:
        assert_close(got, other, atol=0, rtol=0)  # no resize: the modes agree
    else:
        assert (got - other).abs().max() > 0.05  # the two modes are different resizes


@pytest.mark.parametrize("resolution", [32, 224])
def test_preprocess_modes_equal_torchvision_with_antialias_pinned(tmp_path, resolution):
    import clip
    from torchvision import transforms
    preprocess = clip.clip._transform(resolution)
    synthetic.write_index_video(tmp_path / "v.mp4", 30, width=80, height=50)
    frames = read_video_frames(tmp_path / "v.mp4", 5)
    for antialias in (False, True):
        torchvision_float = transforms.Compose([
            transforms.Resize(resolution, transforms.InterpolationMode.BICUBIC,
                              antialias=antialias),
            transforms.CenterCrop(resolution), preprocess.transforms[-1]])
        expected = torchvision_float(frames.float() / 255)
        got = FramePreprocess(preprocess, antialias=antialias)(frames)
        assert_close(got, expected, atol=1e-6, rtol=0)
    half = FramePreprocess(preprocess, dtype=torch.float16)(frames)
    assert half.dtype == torch.float16
    assert_close(half.float(), FramePreprocess(preprocess)(frames), atol=0.01, rtol=0)


def test_preprocess_must_come_from_clip():
    with pytest.raises(ValueError, match="Compose that clip.load or open_clip returns"):
        FramePreprocess(lambda x: x)


def test_raw_frames_and_collate_of_mixed_sizes(tmp_path):
    from data_loader import collate_videos
    (tmp_path / "clips").mkdir()
    synthetic.write_index_video(tmp_path / "clips" / "a.mp4", 12, width=64, height=48)
    synthetic.write_index_video(tmp_path / "clips" / "b.mp4", 9, width=40, height=80)
    (tmp_path / "mixed.csv").write_text("video_path,caption\nclips/a.mp4,x\nclips/b.mp4,y\n"
                                        "clips/gone.mp4,z\n")
    dataset = CSVDataset(tmp_path / "mixed.csv", tmp_path, None, 3, on_error="report",
                         check_files=False)
    batch = next(iter(DataLoader(dataset, batch_size=3, num_workers=2,
                                 collate_fn=collate_videos)))
    assert batch["index"].tolist() == [0, 1, 2] and batch["error"][:2] == ["", ""]
    assert [tuple(v.shape) for v in batch["video"]] == [(3, 3, 48, 64), (3, 3, 80, 40),
                                                        (3, 3, 0, 0)]
    assert batch["video"][0].dtype == torch.uint8
    assert synthetic.decode_frame_indices(batch["video"][1]) == sample_frame_indices(9, 3)
    assert "gone.mp4" in batch["error"][2]


# ---------------------------------------------------------------- datasets

def test_msrvtt_dataset_one_item_per_video(msrvtt_root, msrvtt_source, clip_preprocess):
    _, info = msrvtt_source
    dataset = MSRVTTDataset(clip_preprocess, 4, split="miech", data_root=msrvtt_root,
                            download=False)
    test_ids = sorted(info["lists"]["miech"])
    assert dataset.video_ids == test_ids and len(dataset) == len(test_ids)
    assert len(dataset.queries) == sum(len(info["captions"][v]) for v in test_ids)
    item = dataset[2]
    assert item["video_id"] == test_ids[2] and item["error"] == ""
    assert tuple(item["video"].shape) == (4, 3, 32, 32)
    raw = read_video_frames(msrvtt_root / "MSRVTT" / "videos" / "all" / f"{test_ids[2]}.mp4", 4)
    assert_close(item["video"], FramePreprocess(clip_preprocess)(raw))


@pytest.mark.parametrize("kind", ["msrvtt", "csv"])
def test_dataset_in_dataloader_with_workers(msrvtt_root, clip_preprocess, tmp_path, kind):
    if kind == "msrvtt":
        dataset = MSRVTTDataset(clip_preprocess, 3, data_root=msrvtt_root, download=False)
    else:
        dataset = CSVDataset(_write_csv_dataset(tmp_path), tmp_path, clip_preprocess, 3)
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [v for b in batches for v in b["video_id"]] == dataset.video_ids
    assert tuple(batches[0]["video"].shape) == (2, 3, 3, 32, 32)
    for batch in batches:
        for index, video in zip(batch["index"], batch["video"]):
            assert_close(video, dataset[int(index)]["video"], atol=0, rtol=0)


def test_bad_video_in_dataset(msrvtt_root, clip_preprocess, tmp_path):
    data_root = tmp_path / "data"
    shutil.copytree(msrvtt_root / "MSRVTT", data_root / "MSRVTT")
    (data_root / "MSRVTT" / "videos" / "all" / "video7012.mp4").write_bytes(b"corrupt")
    strict = MSRVTTDataset(clip_preprocess, 3, data_root=data_root, download=False)
    with pytest.raises(VideoDecodeError, match="video7012.mp4"):
        strict[2]
    lenient = MSRVTTDataset(clip_preprocess, 3, data_root=data_root, download=False,
                            on_error="report")
    item = lenient[2]
    assert "video7012.mp4" in item["error"] and (item["video"] == 0).all()
    assert tuple(item["video"].shape) == (3, 3, 32, 32)


def _write_csv_dataset(root):
    (root / "clips").mkdir()
    synthetic.write_index_video(root / "clips" / "a.mp4", 12)
    synthetic.write_index_video(root / "clips" / "b.mp4", 30)
    csv = root / "captions.csv"
    csv.write_text("video_path,caption\nclips/b.mp4,a dog\nclips/a.mp4,a cat\n"
                   "clips/b.mp4,\"a dog, running\"\n")
    return csv


def test_csv_dataset(tmp_path, clip_preprocess):
    csv = _write_csv_dataset(tmp_path)
    dataset = CSVDataset(csv, tmp_path, clip_preprocess, 4)
    assert dataset.video_ids == ["clips/b.mp4", "clips/a.mp4"]
    assert list(dataset.queries.itertuples(index=False, name=None)) == [
        ("clips/b.mp4", "a dog"), ("clips/b.mp4", "a dog, running"), ("clips/a.mp4", "a cat")]
    raw = read_video_frames(tmp_path / "clips" / "a.mp4", 4)
    assert synthetic.decode_frame_indices(raw) == sample_frame_indices(12, 4)
    assert_close(dataset[1]["video"], FramePreprocess(clip_preprocess)(raw))


def test_csv_missing_file_reported_by_line(tmp_path, clip_preprocess, monkeypatch):
    csv = _write_csv_dataset(tmp_path)
    with open(csv, "a") as f:
        f.write("clips/gone.mp4,nothing\n")
    decoded = []
    monkeypatch.setattr(data_loader, "read_video", lambda *a: decoded.append(a))
    with pytest.raises(DatasetError, match=r"line\(s\) \[5\].*gone.mp4.*--video_root"):
        CSVDataset(csv, tmp_path, clip_preprocess, 4)
    assert decoded == []


@pytest.mark.parametrize("content,message", [
    ("path,text\nx.mp4,y\n", "needs columns video_path and caption"),
    ("video_path,caption\n", "has no rows"),
    ("video_path,caption\nclips/a.mp4,\n", "empty video_path or caption on line\\(s\\) \\[2\\]"),
])
def test_csv_bad_content(tmp_path, clip_preprocess, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        CSVDataset(tmp_path / "bad.csv", tmp_path, clip_preprocess, 4)
    with pytest.raises(DatasetError, match="not found"):
        CSVDataset(tmp_path / "nope.csv", tmp_path, clip_preprocess, 4)


def test_one_file_under_several_paths_is_one_video(tmp_path, clip_preprocess):
    import os
    (tmp_path / "clips").mkdir()
    synthetic.write_index_video(tmp_path / "clips" / "a.mp4", 12)
    synthetic.write_index_video(tmp_path / "clips" / "b.mp4", 9)
    os.symlink(tmp_path / "clips" / "b.mp4", tmp_path / "clips" / "link.mp4")
    (tmp_path / "c.csv").write_text("video_path,caption\nclips/a.mp4,one\n./clips/a.mp4,two\n"
                                    "clips/b.mp4,three\nclips/link.mp4,four\nclips/b.mp4,three\n")
    with pytest.warns(UserWarning) as warned:
        dataset = CSVDataset(tmp_path / "c.csv", tmp_path, clip_preprocess, 2)
    messages = [str(w.message) for w in warned]
    assert any("2 path(s) name a file already listed" in m and "'./clips/a.mp4' is "
               "'clips/a.mp4'" in m for m in messages)
    assert any("1 row(s) repeat a (video, caption) row" in m for m in messages)
    assert dataset.video_ids == ["clips/a.mp4", "clips/b.mp4"]
    assert list(dataset.queries.itertuples(index=False, name=None)) == [
        ("clips/a.mp4", "one"), ("clips/a.mp4", "two"), ("clips/b.mp4", "three"),
        ("clips/b.mp4", "four"), ("clips/b.mp4", "three")]


def test_csv_that_is_a_folder(tmp_path, clip_preprocess):
    with pytest.raises(DatasetError, match="is a folder; pass the CSV file"):
        CSVDataset(tmp_path, tmp_path, clip_preprocess, 2)


class _SigintHandlers(torch.utils.data.Dataset):
    """Each item: how SIGINT is handled in the process that makes it."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        import signal

        return str(signal.getsignal(signal.SIGINT))


def test_loader_workers_leave_ctrl_c_to_the_main_process():
    """A worker with ignore_interrupts ignores SIGINT (a worker that took a terminal's Ctrl-C
    printed a traceback from decord's VideoReader.__del__); the main process still takes it."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        loader = torch.utils.data.DataLoader(_SigintHandlers(), batch_size=1, num_workers=1,
                                             worker_init_fn=data_loader.ignore_interrupts)
        assert [batch[0] for batch in loader] == [str(signal.SIG_IGN)] * 2
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
