"""search --image and --clips on the synthetic colour videos: an image of a colour finds that
colour's video and moment; each moment clip starts at the key frame before the moment (stream
copy) or at its first frame (re-encoded), holds exactly the frames up to its end, decodes, and
never replaces a file the tool did not write."""
import errno
import json
import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import search_videos
from clip_hitchhiker.errors import VideoDecodeError
from clip_hitchhiker.search.moment_clips import (browser_playable, clip_name, place_clip,
                                                 write_clip)
from tests import search_synthetic

FPS = search_synthetic.VIDEO_FPS
GOP_SECONDS = 2.0


@pytest.fixture(scope="module")
def gop_index(tmp_path_factory):
    """The colour index of videos with a key frame every 2 s (8 frames)."""
    return search_synthetic.build_colour_index(tmp_path_factory.mktemp("clips"),
                                               gop=int(GOP_SECONDS * FPS))


def search_json(capsys, *argv):
    capsys.readouterr()
    search_videos.main(search_videos.parse_args(["search", *map(str, argv), "--json"]))
    return json.loads(capsys.readouterr().out)


def decoded(path):
    """(times [N] in seconds, RGB frames [N, H, W, 3]) of every frame of a video."""
    with av.open(str(path)) as container:
        frames = list(container.decode(container.streams.video[0]))
    return (np.array([f.time for f in frames]),
            np.stack([f.to_ndarray(format="rgb24") for f in frames]))


def colour_distance(frame, colour):
    return np.abs(frame.reshape(-1, 3).mean(0) - search_synthetic.SEARCH_COLOURS[colour]).max()


def test_image_of_each_colour_finds_its_video_and_moment(gop_index, tmp_path, capsys):
    names = list(gop_index["truth"])
    images = [search_synthetic.colour_image(tmp_path / f"{n}.png", n) for n in names]
    by_image = search_json(capsys, "--index", gop_index["index"], "-k", 1,
                           *[arg for image in images for arg in ("--image", image)])
    by_text = search_json(capsys, "--index", gop_index["index"], "-k", 1,
                          *[f"a {n} video" for n in names])
    for name, image, result, text in zip(names, images, by_image["queries"],
                                         by_text["queries"]):
        assert result["image"] == str(image.resolve())
        hit, truth = result["hits"][0], gop_index["truth"][name]
        assert hit["video"] == truth[0]
        assert (hit["start"], hit["peak"], hit["end"]) == tuple(
            text["hits"][0][k] for k in ("start", "peak", "end"))
        overlap = min(hit["end"], truth[1][1]) - max(hit["start"], truth[1][0])
        assert overlap / (max(hit["end"], truth[1][1]) - min(hit["start"], truth[1][0])) >= 0.5


def test_image_and_text_queries_together_in_the_table(gop_index, tmp_path, capsys):
    image = search_synthetic.colour_image(tmp_path / "pink.png", "pink")
    capsys.readouterr()
    search_videos.main(search_videos.parse_args(["search", "--index", str(gop_index["index"]),
                                                 "a red video", "--image", str(image), "-k",
                                                 "1"]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query: a red video" and lines[3] == f"image: {image.resolve()}"
    assert lines[5].split()[-1] == gop_index["truth"]["pink"][0]


def test_unreadable_image_is_one_line(gop_index, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SystemExit) as exit_info:
        search_videos.cli(["search", "--index", str(gop_index["index"]), "--image", str(bad)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith(f"error: image {bad} cannot be read")
    assert len(err.strip().splitlines()) == 1


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n"
       b"%%EOF\n")


def ghostscript_calls(monkeypatch):
    """The calls Pillow's EPS reader makes to Ghostscript (none run: it is replaced)."""
    from PIL import EpsImagePlugin

    calls = []

    def ghostscript(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    return calls


def test_an_image_query_is_the_image_as_a_viewer_shows_it(tmp_path, monkeypatch):
    """Pixels after the EXIF orientation (3: turned half a turn) and transparency over white;
    an EPS is refused before Pillow hands it to Ghostscript."""
    from PIL import Image

    from clip_hitchhiker.errors import ConfigError
    from clip_hitchhiker.search.query_embeddings import image_tensor

    stored = Image.new("RGB", (2, 1))
    stored.putdata([(255, 0, 0), (0, 0, 255)])  # red | blue as stored
    exif = stored.getexif()
    exif[0x0112] = 3  # Orientation: rotated 180 degrees
    for suffix in (".jpg", ".png"):
        stored.save(tmp_path / f"turned{suffix}", exif=exif, **(
            {"quality": 100, "subsampling": 0} if suffix == ".jpg" else {}))
        pixels = image_tensor(tmp_path / f"turned{suffix}")[0].permute(1, 2, 0).numpy()
        assert np.abs(pixels[0].astype(int) - [(0, 0, 255), (255, 0, 0)]).max() <= 8, suffix
    clear = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    clear.putpixel((1, 0), (0, 255, 0, 255))
    assert image_tensor(clear)[0, :, 0].tolist() == [[255, 0], [255, 255], [255, 0]]
    calls = ghostscript_calls(monkeypatch)
    (tmp_path / "page.eps").write_bytes(EPS)
    with pytest.raises(ConfigError, match="give a JPEG, PNG, WebP, GIF, BMP or TIFF"):
        image_tensor(tmp_path / "page.eps")
    assert calls == []


def test_clips_start_at_the_key_frame_before_and_hold_the_moment(gop_index, tmp_path, capsys):
    report = search_json(capsys, "--index", gop_index["index"], "a red video", "a teal video",
                         "a yellow video", "-k", 3, "--clips", tmp_path / "clips")
    for result in report["queries"]:
        for hit in result["hits"]:
            path = Path(hit["clip"])
            assert path.parent == (tmp_path / "clips").resolve()
            assert path.name == clip_name(hit["video"], hit["start"], hit["end"])
            key_frame = math.floor(hit["start"] / GOP_SECONDS) * GOP_SECONDS
            times, frames = decoded(path)
            source_times, source_frames = decoded(hit["video"])
            wanted = (source_times >= key_frame - 1e-9) & (source_times < hit["end"] - 1e-9)
            # Exactly the source's frames from the key frame to the end, timed from 0.
            np.testing.assert_allclose(times, source_times[wanted] - key_frame, atol=1e-3)
            assert np.array_equal(frames, source_frames[wanted])  # copied, not re-encoded
            duration = len(times) / FPS
            moment = hit["end"] - hit["start"]
            assert moment <= duration < moment + GOP_SECONDS
    red = report["queries"][0]["hits"][0]
    times, frames = decoded(red["clip"])
    at_start = round((red["start"] - math.floor(red["start"] / 2) * 2) * FPS)
    assert colour_distance(frames[at_start], "red") < 12


def test_clips_never_replace_a_file_and_a_rerun_reuses_its_own(gop_index, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    first = search_json(capsys, "--index", gop_index["index"], "a green video", "-k", 1)
    hit = first["queries"][0]["hits"][0]
    users = folder / clip_name(hit["video"], hit["start"], hit["end"])
    users.write_bytes(b"the user's own file")
    report = search_json(capsys, "--index", gop_index["index"], "a green video", "-k", 1,
                         "--clips", folder)
    made = Path(report["queries"][0]["hits"][0]["clip"])
    assert users.read_bytes() == b"the user's own file"
    assert made.name == users.stem + " (2).mp4"
    before = sorted(p.name for p in folder.iterdir())
    again = search_json(capsys, "--index", gop_index["index"], "a green video", "-k", 1,
                        "--clips", folder)
    assert again["queries"][0]["hits"][0]["clip"] == str(made)
    assert sorted(p.name for p in folder.iterdir()) == before  # no "(3)", no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert made.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file of the user's


def test_place_clip_tries_names_in_order(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"1")
    (tmp_path / "a (2).mp4").mkdir()
    made = tmp_path / "made"
    made.write_bytes(b"new")
    (tmp_path / "a (3).mp4").symlink_to(tmp_path / "gone")  # a dangling link is no clip
    assert place_clip(made, tmp_path, "a.mp4") == tmp_path / "a (4).mp4"
    assert (tmp_path / "a (4).mp4").read_bytes() == b"new" and not made.exists()
    assert (tmp_path / "a.mp4").read_bytes() == b"1"
    assert os.readlink(tmp_path / "a (3).mp4") == str(tmp_path / "gone")


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV, errno.ENOTSUP])
def test_place_clip_without_hard_links_claims_the_name_then_moves_the_clip_onto_it(
        tmp_path, monkeypatch, code):
    """FAT, exFAT and some SMB mounts have no hard links (os.link raises): the name is claimed
    with O_EXCL, so the same names are passed over, and the clip replaces only that claim."""
    def no_link(source, target):
        raise OSError(code, os.strerror(code), str(source), None, str(target))

    monkeypatch.setattr(os, "link", no_link)
    (tmp_path / "a.mp4").write_bytes(b"1")
    (tmp_path / "a (2).mp4").mkdir()
    (tmp_path / "a (3).mp4").symlink_to(tmp_path / "gone")
    made = tmp_path / ".clip-1.mp4.part"
    made.write_bytes(b"new")
    assert place_clip(made, tmp_path, "a.mp4") == tmp_path / "a (4).mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a (2).mp4", "a (3).mp4", "a (4).mp4",
                                                         "a.mp4"]
    assert (tmp_path / "a (4).mp4").read_bytes() == b"new"
    assert (tmp_path / "a.mp4").read_bytes() == b"1" and not os.path.exists(tmp_path / "gone")
    again = tmp_path / ".clip-2.mp4.part"
    again.write_bytes(b"new")  # the same clip again: its earlier copy is reused
    assert place_clip(again, tmp_path, "a.mp4") == tmp_path / "a (4).mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a (2).mp4", "a (3).mp4", "a (4).mp4",
                                                         "a.mp4"]


def test_place_clip_without_hard_links_leaves_nothing_when_the_move_fails(tmp_path,
                                                                          monkeypatch):
    def no_link(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    def full(source, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "replace", full)
    made = tmp_path / ".clip-1.mp4.part"
    made.write_bytes(b"new")
    with pytest.raises(OSError, match="No space left on device"):
        place_clip(made, tmp_path, "a.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".clip-1.mp4.part"]  # no placeholder


def test_place_clip_raises_what_is_not_a_missing_hard_link(tmp_path, monkeypatch):
    def broken(source, target):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", broken)
    made = tmp_path / "made"
    made.write_bytes(b"new")
    with pytest.raises(OSError, match="Input/output error"):
        place_clip(made, tmp_path, "a.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made"]


def test_clips_that_is_a_file_or_read_only_is_one_line_before_any_search(gop_index, tmp_path,
                                                                           capsys, monkeypatch):
    """--clips naming a file raised FileExistsError after the search; now both cases are one
    ConfigError line, before the index is opened."""
    from clip_hitchhiker.errors import ConfigError

    opened = []
    monkeypatch.setattr(search_videos.VideoIndex, "open", lambda folder: opened.append(folder))
    a_file = tmp_path / "report.json"
    a_file.write_text("mine")
    with pytest.raises(ConfigError, match=f"^--clips {a_file} is a file; give a folder"):
        search_json(capsys, "--index", gop_index["index"], "a green video", "--clips", a_file)
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    monkeypatch.setattr(search_videos.os, "access", lambda path, mode: False)  # root writes all
    with pytest.raises(ConfigError, match=f"^--clips {read_only} cannot be written"):
        search_json(capsys, "--index", gop_index["index"], "a green video", "--clips", read_only)
    assert opened == [] and a_file.read_text() == "mine"


def test_clips_on_a_file_system_without_hard_links(gop_index, tmp_path, capsys, monkeypatch):
    def no_link(source, target):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(source), None,
                              str(target))

    monkeypatch.setattr(os, "link", no_link)
    folder = tmp_path / "clips"
    report = search_json(capsys, "--index", gop_index["index"], "a red video", "-k", 2,
                         "--clips", folder)
    hits = report["queries"][0]["hits"]
    names = [clip_name(hit["video"], hit["start"], hit["end"]) for hit in hits]
    assert [hit["clip"] for hit in hits] == [str((folder / name).resolve()) for name in names]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # no temporary left
    for hit in hits:
        times, _ = decoded(hit["clip"])
        assert len(times) > 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_clip_that_cannot_be_written_names_the_video_and_the_clip(gop_index, tmp_path):
    """A full disk (/dev/full answers every write with ENOSPC): the one line names the video and
    the clip, not the descriptor number of the file object the server cuts from."""
    video = gop_index["truth"]["red"][0]
    with os.fdopen(os.open(video, os.O_RDONLY), "rb") as file:
        with pytest.raises(VideoDecodeError) as raised:
            write_clip(file, 1.0, 3.0, "/dev/full", video_name=str(video),
                       clip_path=tmp_path / "red_1.000-3.000.mp4")
    assert str(raised.value) == (f"cannot cut a clip of {video} into "
                                 f"{tmp_path / 'red_1.000-3.000.mp4'} (No space left on device)")
    with pytest.raises(VideoDecodeError) as raised:
        write_clip(video, 1.0, 3.0, "/dev/full")
    assert str(raised.value) == (f"cannot cut a clip of {video} into /dev/full (No space left "
                                 "on device)")


def write_mjpeg_avi(path, colour_segment, seconds=6):
    """An AVI of MJPEG frames at FPS (a codec MP4 does not hold, a container no browser plays):
    grey, except the frames in colour_segment = (start, end) seconds, which are red."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=FPS)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuvj420p"
        for i in range(seconds * FPS):
            red = colour_segment[0] <= i / FPS < colour_segment[1]
            image = np.full((32, 32, 3), search_synthetic.SEARCH_COLOURS["red"] if red else 128,
                            np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_codec_mp4_cannot_hold_is_re_encoded_from_the_moments_first_frame(tmp_path):
    source = tmp_path / "red.avi"
    write_mjpeg_avi(source, (2.0, 4.0))
    assert not browser_playable(source)
    meta = write_clip(source, 2.0, 3.5, tmp_path / "clip.mp4")
    assert meta == {"start": 2.0, "end": 3.25, "method": "encode"}
    times, frames = decoded(tmp_path / "clip.mp4")
    np.testing.assert_allclose(times, [0, 0.25, 0.5, 0.75, 1.0, 1.25], atol=1e-3)
    assert all(colour_distance(f, "red") < 12 for f in frames)
    with av.open(str(tmp_path / "clip.mp4")) as clip:
        assert clip.streams.video[0].codec_context.name == "h264"
        assert clip.streams.video[0].codec_context.format.name == "yuv420p"
    # Between two frames, the clip starts with the one showing at that time.
    assert write_clip(source, 2.1, 3.0, tmp_path / "late.mp4")["start"] == 2.0


def test_for_the_browser_4_4_4_h264_is_re_encoded_and_4_2_0_copied(gop_index, tmp_path):
    red = gop_index["truth"]["red"][0]
    assert write_clip(red, 5.0, 6.0, tmp_path / "a.mp4")["method"] == "copy"
    assert write_clip(red, 5.0, 6.0, tmp_path / "b.mp4", for_browser=True) == {
        "start": 5.0, "end": 5.75, "method": "encode"}
    plain = tmp_path / "plain"
    truth = search_synthetic.build_segment_videos(plain, colours=("red",), pix_fmt="yuv420p",
                                                  gop=8)
    assert browser_playable(truth["red"][0])
    assert write_clip(truth["red"][0], 5.0, 6.0, tmp_path / "c.mp4", for_browser=True) == {
        "start": 4.0, "end": 5.75, "method": "copy"}


def write_with_audio(path, audio_codec, container_format=None):
    """4 s of grey H.264 4:2:0 video at FPS with a 440 Hz tone in audio_codec."""
    with av.open(str(path), "w", format=container_format) as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        video.options = {"g": "4", "preset": "ultrafast"}
        audio = container.add_stream(audio_codec, rate=16000)
        audio.layout = "mono"
        for i in range(4 * FPS):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8),
                                               format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        samples = np.sin(2 * np.pi * 440 * np.arange(4 * 16000) / 16000).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[None, start:start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
            for packet in audio.encode(frame):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                container.mux(packet)


@pytest.mark.parametrize("codec, suffix, expected", [("aac", ".mp4", "copy"),
                                                     ("pcm_s16le", ".mkv", "encode")])
def test_audio_is_kept(tmp_path, codec, suffix, expected):
    source = tmp_path / f"tone{suffix}"
    write_with_audio(source, codec)
    meta = write_clip(source, 1.2, 2.6, tmp_path / "clip.mp4")
    assert meta["start"] == 1.0  # the key frame every 4 frames before 1.2 s
    with av.open(str(tmp_path / "clip.mp4")) as clip:
        audio = clip.streams.audio[0]
        assert audio.codec_context.name == "aac"
        samples = sum(f.samples for f in clip.decode(audio))
    # From the key frame to the end: 1.6 s of sound, give or take an AAC frame (1024).
    assert abs(samples / audio.codec_context.sample_rate - 1.6) < 1024 * 2 / 16000
    assert (expected == "copy") == (codec == "aac")
