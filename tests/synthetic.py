"""Synthetic test data: videos whose pixels encode the frame index, a release-shaped MSR-VTT zip,
a tiny CLIP checkpoint, and an HTTP server on 127.0.0.1. Used by the tests and the benchmarks.
"""
import http.server
import io
import json
import pickle
import threading
import zipfile
from pathlib import Path

import numpy as np

# The tiny CLIP and the colour videos ship with the package (the demo uses them); the tests
# reach them through this module as before.
from clip_hitchhiker.synthetic_data import (LEARNING_COLOURS, build_colour_videos,  # noqa: F401
                                            save_tiny_clip, tiny_clip, write_colour_video,
                                            write_noise_video)

# Frame i is uniform colour: red encodes i % 16, green i // 16, in steps of 16 (up to 256
# frames); steps that wide survive lossy compression and YUV conversion. Gray videos are stored in
# limited range (16..235), decoded as (v - 16) * 255 / 219: their levels stay inside it.
_STEP = 16
_GRAY_BASE, _GRAY_STEP = 32, 12


def frame_colour(index):
    return ((index % 16) * _STEP + 8, (index // 16) * _STEP + 8, 128)


def write_index_video(path, num_frames, width=64, height=48, fps=10, gray=False):
    """An H.264 mp4 whose frame i has colour frame_colour(i); gray videos encode i % 16."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "gray" if gray else ("yuv420p" if width % 2 == 0 and height % 2 == 0
                                              else "yuv444p")
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for i in range(num_frames):
            image = np.empty((height, width, 3), np.uint8)
            image[...] = frame_colour(i)
            if gray:
                image[...] = _GRAY_BASE + (i % 16) * _GRAY_STEP
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_frame_indices(frames, gray=False):
    """frames: uint8 [F, 3, H, W] (or float in [0, 1]). returns: list of F frame indices."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.max() <= 1.0:
        frames = frames * 255
    centre = frames[:, :, frames.shape[2] // 2, frames.shape[3] // 2]  # [F, 3]
    if gray:
        level = centre[:, 0] * 219 / 255 + 16
        return np.round((level - _GRAY_BASE) / _GRAY_STEP).astype(int).tolist()
    low = np.round((centre[:, 0] - 8) / _STEP).astype(int)
    high = np.round((centre[:, 1] - 8) / _STEP).astype(int)
    return (low + 16 * high).tolist()


def build_msrvtt(root, num_videos=6, frame_counts=None, captions_per_video=3, short_videos=(),
                 width=64, height=48, fps=10):
    """Write a release-shaped MSRVTT/ folder under root and return its description.

    Videos video7010, video7011, ...; the jsfusion and miech lists hold the first
    num_videos - 1 of them (listed out of order), the full list all of them. Videos in
    short_videos have one caption fewer (as some MSR-VTT videos have 19, not 20).
    returns: dict(video_ids, captions {id: [..]}, caption_index {id: int}, lists {split: [..]},
             frame_counts {id: int}).
    """
    root = Path(root) / "MSRVTT"
    video_dir = root / "videos" / "all"
    split_dir = root / "high-quality" / "structured-symlinks"
    video_dir.mkdir(parents=True)
    split_dir.mkdir(parents=True)
    (root / "annotation").mkdir()
    video_ids = [f"video{7010 + i}" for i in range(num_videos)]
    frame_counts = frame_counts or [5 + 7 * i for i in range(num_videos)]
    captions, annotations = {}, []
    for i, video_id in enumerate(video_ids):
        count = captions_per_video - (1 if video_id in short_videos else 0)
        captions[video_id] = [f"caption {k} of clip {i}" for k in range(count)]
        write_index_video(video_dir / f"{video_id}.mp4", frame_counts[i], width, height, fps)
    # Interleave the json's entries, as the release's file does not group them by video.
    for k in range(captions_per_video):
        for video_id in video_ids:
            if k < len(captions[video_id]):
                annotations.append({"image_id": video_id, "caption": captions[video_id][k],
                                    "id": len(annotations)})
    (root / "annotation" / "MSR_VTT.json").write_text(json.dumps({"annotations": annotations}))
    test_ids = video_ids[:-1]
    lists = {"jsfusion": test_ids, "miech": test_ids, "full-test": video_ids}
    files = {"jsfusion": "val_list_jsfusion.txt", "miech": "test_list_miech.txt",
             "full-test": "test_list_full.txt"}
    for split, ids in lists.items():
        (split_dir / files[split]).write_text("\n".join(reversed(ids)) + "\n")
    (split_dir / "train_list_jsfusion.txt").write_text(video_ids[-1] + "\n")
    caption_index = {v: np.int64(i % len(captions[v])) for i, v in enumerate(test_ids)}
    with open(split_dir / "jsfusion_val_caption_idx.pkl", "wb") as f:
        pickle.dump(caption_index, f)
    return {"video_ids": video_ids, "captions": captions, "lists": lists,
            "caption_index": {k: int(v) for k, v in caption_index.items()},
            "frame_counts": dict(zip(video_ids, frame_counts))}


def zip_folder(folder, zip_path, extra_entries=()):
    """Zip folder (keeping its name as the top level) as the release's MSRVTT.zip is laid out.

    extra_entries: (ZipInfo or name, bytes) pairs appended as they are, to make bad zips.
    """
    folder = Path(folder)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder.parent).as_posix())
        for info, data in extra_entries:
            archive.writestr(info, data)
    return zip_path


class FileServer:
    """Serves one bytes payload from 127.0.0.1 in a thread, with failure modes for tests.

    cut_after: close the connection after this many body bytes (first request only);
    ignore_range: answer Range requests with the whole file (HTTP 200); status: e.g. 404.
    Each request's Range header is recorded in self.ranges.
    """

    def __init__(self, payload, cut_after=None, ignore_range=False, status=200):
        self.payload, self.cut_after = payload, cut_after
        self.ignore_range, self.status = ignore_range, status
        self.ranges = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.ranges.append(self.headers.get("Range"))
                if server.status != 200:
                    self.send_error(server.status)
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header and not server.ignore_range:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(server.payload):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}"
                                                      f"/{len(server.payload)}")
                else:
                    self.send_response(200)
                body = server.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[:server.cut_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/MSRVTT.zip"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def zip_bytes(folder):
    buffer = io.BytesIO()
    zip_folder(folder, buffer)
    return buffer.getvalue()


def cli_argv(tmp_path, data_root, model, *extra):
    """run_msr_retrieval arguments for a quick offline CPU run on the synthetic data."""
    return ["--num_frames", "4", "--model", str(model), "--data_root", str(data_root),
            "--cache_dir", str(tmp_path / "cache"), "--num_workers", "0", "--device", "cpu",
            "--msrvtt_url", "http://127.0.0.1:9/not-needed", *map(str, extra)]


CHARADES_CLASSES = ["Holding some clothes", "Opening a door", "Drinking from a cup",
                    "Sitting on a chair"]
# video id -> its actions field (class, start, end; several separated by ';', or none).
CHARADES_VIDEOS = {"AB001": "c000 0.0 3.1;c002 1.0 2.0", "AB002": "c001 0.5 1.5",
                   "AB003": "", "AB004": "c002 0.0 1.0;c001 0.2 0.9", "AB005": "c000 0.1 0.4"}


def build_charades(root, frame_counts=(12, 20, 9, 15, 30)):
    """Charades/ (classes, test CSV) and Charades_v1_480/ (videos) under root, as AI2's zips
    extract. returns: {"labels": {video id: sorted class indices}}."""
    root = Path(root)
    annotations, videos = root / "Charades", root / "Charades_v1_480"
    annotations.mkdir(parents=True)
    videos.mkdir(parents=True)
    (annotations / "Charades_v1_classes.txt").write_text(
        "".join(f"c{i:03d} {name}\n" for i, name in enumerate(CHARADES_CLASSES)))
    header = ("id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,"
              "length")
    rows = [header] + [f"{v},S1,Kitchen,6,7,Yes,a script,cup;door,\"a person, moving\",{a},10.0"
                       for v, a in CHARADES_VIDEOS.items()]
    (annotations / "Charades_v1_test.csv").write_text("\n".join(rows) + "\n")
    for (video_id, _), count in zip(CHARADES_VIDEOS.items(), frame_counts):
        write_index_video(videos / f"{video_id}.mp4", count)
    labels = {v: sorted({int(a.split()[0][1:]) for a in actions.split(";") if a})
              for v, actions in CHARADES_VIDEOS.items()}
    return {"labels": labels}


ACTIVITYNET = {
    "v_aaa": {"duration": 10.0, "timestamps": [[5.0, 9.0], [0.0, 4.0]],
              "sentences": ["Then she jumps.", "A woman runs."]},
    "v_bbb": {"duration": 8.0, "timestamps": [[0.0, 8.0]], "sentences": ["A dog swims."]},
    "v_ccc": {"duration": 6.0, "timestamps": [[1.0, 2.0], [0.0, 1.0], [2.0, 6.0]],
              "sentences": ["second", "first", "third and last"]},
    "v_ddd": {"duration": 5.0, "timestamps": [[0.0, 5.0]], "sentences": ["Missing video."]},
}


def build_activitynet(root, video_root, missing=("v_ddd",)):
    """A captions folder (val_1.json at its top, as the public zip has it) under root, and
    videos in video_root (one .mkv, the rest .mp4), leaving out `missing`."""
    root, video_root = Path(root), Path(video_root)
    root.mkdir(parents=True)
    video_root.mkdir(parents=True)
    (root / "val_1.json").write_text(json.dumps(ACTIVITYNET))
    (root / "train.json").write_text(json.dumps({}))
    for i, video_id in enumerate(ACTIVITYNET):
        if video_id not in missing:
            suffix = ".mkv" if i == 1 else ".mp4"
            write_index_video(video_root / f"{video_id}{suffix}", 10 + 7 * i)


def zip_contents(folder):
    """The files of folder zipped with no top folder (as the ActivityNet captions zip is)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(Path(folder).rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()
