"""Synthetic MSVD, DiDeMo, LSMDC, VATEX and Kinetics-400 in the real annotation formats (the
official files' names, columns and JSON shapes; ids shaped as the real ones), with tiny videos
whose pixels encode the frame index (tests.synthetic.write_index_video)."""
import csv
import io
import json
import pickle
import tarfile
from pathlib import Path

from tests import synthetic

# MSVD: video id -> captions as raw-captions.pkl holds them (lists of tokens). The list file
# names the test videos out of id order; one training video is not in the test split.
MSVD_TEST = ["-4wsuPCjDBc_5_15", "bQJQGoJF7_k_162_169", "0lh_UWF9ZP4_27_31"]
MSVD_CAPTIONS = {
    "-4wsuPCjDBc_5_15": [["a", "man", "plays", "guitar"], ["a", "man", "plays", "guitar"],
                         ["someone", "is", "playing", "a", "guitar", "."]],
    "bQJQGoJF7_k_162_169": [["a", "cat", "jumps"], ["the", "cat", "leaps", "up"]],
    "0lh_UWF9ZP4_27_31": [["a", "woman", "slices", "an", "onion"]],
    "trainonly_1_2": [["not", "in", "the", "test", "split"]],
}


def build_msvd(root, video_root=None, missing=()):
    """msvd_data/ (test/train/val lists, raw-captions.pkl) under root, and the videos
    (<id>.avi, as YouTubeClips.tar holds them) in video_root (default root/YouTubeClips),
    leaving out `missing`. returns: {video id: frame count}."""
    folder = Path(root) / "msvd_data"
    folder.mkdir(parents=True)
    (folder / "test_list.txt").write_text("\n".join(MSVD_TEST) + "\n")
    (folder / "train_list.txt").write_text("trainonly_1_2\n")
    (folder / "val_list.txt").write_text("")
    with open(folder / "raw-captions.pkl", "wb") as f:
        pickle.dump(MSVD_CAPTIONS, f)
    video_root = Path(video_root or Path(root) / "YouTubeClips")
    video_root.mkdir(parents=True, exist_ok=True)
    frames = {}
    for i, video in enumerate(MSVD_TEST):
        frames[video] = 9 + 5 * i
        if video not in missing:
            synthetic.write_index_video(video_root / f"{video}.avi", frames[video])
    return frames


def tar_bytes(folder):
    """folder tarred with its name as the top level (as YouTubeClips.tar is)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(folder, arcname=Path(folder).name)
    return buffer.getvalue()


# DiDeMo: entries in the file's order. Video A's descriptions are listed out of the order of
# their moments (times), as the real file does; C has no video in the user's folder. D is in
# test_data.json but not in the test split (Collaborative Experts' test_list.txt), as 33 of the
# real file's 1,037 videos are not.
DIDEMO_A = "10015567@N08_3655084291_d8b58466fa.mov"
DIDEMO_B = "12090392@N02_13482799053_87ef417396.mp4"
DIDEMO_C = "99999999@N00_1_abcdef0123.mov"
DIDEMO_D = "11699242@N07_8283285682_d1267bb1cc."
DIDEMO_TEST_LIST = [DIDEMO_A, DIDEMO_B, DIDEMO_C]  # sorted, as the real list is
DIDEMO_ENTRIES = [
    {"annotation_id": 1, "description": "the dog runs back", "video": DIDEMO_A,
     "times": [[4, 5], [4, 4], [3, 5], [4, 5]], "download_link": "x", "num_segments": 6},
    {"annotation_id": 2, "description": "a woman waves", "video": DIDEMO_B,
     "times": [[0, 0], [0, 0], [0, 1], [0, 0]], "download_link": "x", "num_segments": 6},
    {"annotation_id": 3, "description": "a dog appears ", "video": DIDEMO_A,
     "times": [[0, 0], [0, 1], [0, 0], [0, 0]], "download_link": "x", "num_segments": 6},
    {"annotation_id": 4, "description": "camera pans left", "video": DIDEMO_C,
     "times": [[1, 1], [1, 1], [1, 2], [1, 1]], "download_link": "x", "num_segments": 6},
    {"annotation_id": 5, "description": "not in the test split", "video": DIDEMO_D,
     "times": [[2, 2], [2, 2], [2, 2], [2, 2]], "download_link": "x", "num_segments": 6},
]


def build_didemo(video_root):
    """The DiDeMo videos: A under its own name (.mov), B converted (stem + .mkv), C missing, D
    (not in the test split) present. returns: (test_data.json's bytes, test_list.txt's)."""
    video_root = Path(video_root)
    video_root.mkdir(parents=True, exist_ok=True)
    synthetic.write_index_video(video_root / DIDEMO_A, 12)
    synthetic.write_index_video(video_root / f"{Path(DIDEMO_B).stem}.mkv", 20)
    synthetic.write_index_video(video_root / "D.mp4", 7)
    (video_root / "D.mp4").rename(video_root / DIDEMO_D)  # the release's name ends in "."
    return (json.dumps(DIDEMO_ENTRIES).encode(),
            "".join(f"{v}\n" for v in DIDEMO_TEST_LIST).encode())


# LSMDC: the test file's lines (clip id, four times, sentence), tab-separated, no header; movie
# names hold underscores, as the real ones do.
LSMDC_LINES = [
    ("0001_American_Beauty_00.00.51.926-00.00.54.129", "SOMEONE opens the door."),
    ("3034_IDES_OF_MARCH_00.00.59.549-00.01.01.622", "He looks at SOMEONE."),
    ("1010_TITANIC_00.41.32.072-00.41.40.196", "The ship sails on."),
]


def build_lsmdc(folder, video_root, flat=("1010_TITANIC_00.41.32.072-00.41.40.196",),
                missing=()):
    """LSMDC16_challenge_1000_publictect.csv in folder, and the clips in video_root as MPII's
    release stores them (<movie>/<clip id>.avi), or flat (<clip id>.avi) for `flat`."""
    folder, video_root = Path(folder), Path(video_root)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{clip}\t00.00.51.926\t00.00.54.129\t00.00.51.900\t00.00.54.100\t{sentence}"
             for clip, sentence in LSMDC_LINES]
    (folder / "LSMDC16_challenge_1000_publictect.csv").write_text("\n".join(lines) + "\n")
    for i, (clip, _) in enumerate(LSMDC_LINES):
        if clip in missing:
            continue
        movie = clip.rsplit("_", 1)[0]
        target = video_root / (f"{clip}.avi" if clip in flat else f"{movie}/{clip}.avi")
        target.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_index_video(target, 8 + 4 * i)


# VATEX: the validation file holds four videos; HGR's test list names three of them.
VATEX_VALIDATION = [
    {"videoID": "Ptf_2VRj-V0_000122_000132",
     "enCap": ["A man juggles balls.", "Someone juggles three balls in a park."],
     "chCap": ["一个男人在玩杂耍。", "有人在公园里玩三个球。"]},
    {"videoID": "--33Lscn6sk_000004_000014", "enCap": ["A girl sings.", "A child sings a song.",
                                                       "A little girl is singing."],
     "chCap": ["一个女孩在唱歌。"]},
    {"videoID": "HGRval_only_000001_000011", "enCap": ["Validation half of HGR."],
     "chCap": ["验证。"]},
    {"videoID": "zz9_Yk2Lw4U_000030_000040", "enCap": ["Two dogs play."],
     "chCap": ["两只狗。"]},
]
VATEX_TEST = ["zz9_Yk2Lw4U_000030_000040", "Ptf_2VRj-V0_000122_000132",
              "--33Lscn6sk_000004_000014"]


def build_vatex(folder, video_root):
    """test_list.txt (HGR's test ids) in folder and the test videos in video_root.
    returns: vatex_validation_v1.0.json's bytes."""
    folder, video_root = Path(folder), Path(video_root)
    folder.mkdir(parents=True, exist_ok=True)
    video_root.mkdir(parents=True, exist_ok=True)
    (folder / "test_list.txt").write_text("\n".join(VATEX_TEST) + "\n")
    for i, video in enumerate(VATEX_TEST):
        synthetic.write_index_video(video_root / f"{video}.mp4", 10 + 3 * i)
    return json.dumps(VATEX_VALIDATION, ensure_ascii=False).encode()


# Kinetics-400: val.csv rows (label, youtube_id, time_start, time_end, split, is_cc); labels
# listed out of alphabetical order, one with spaces and parentheses, as real labels have.
KINETICS_ROWS = [
    ("playing guitar", "0wR5jVB-WPk", 417, 427), ("abseiling", "3caPS4FHFF8", 36, 46),
    ("dancing ballet", "aaa_BBBccc1", 0, 10), ("playing guitar", "Zz-9yy8xx7w", 5, 15),
    ("passing American football (in game)", "q1w2e3r4t5y", 120, 130),
]


def build_kinetics(video_root, class_folders=("abseiling",), missing=()):
    """The clips in video_root (flat, or in a folder named for the class for the labels in
    class_folders), leaving out the youtube ids in `missing`. returns: val.csv's bytes."""
    video_root = Path(video_root)
    video_root.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
    for i, (label, youtube_id, start, end) in enumerate(KINETICS_ROWS):
        writer.writerow([label, youtube_id, start, end, "val", 0])
        if youtube_id in missing:
            continue
        name = f"{youtube_id}_{start:06d}_{end:06d}.mp4"
        folder = video_root / label if label in class_folders else video_root
        folder.mkdir(exist_ok=True)
        synthetic.write_index_video(folder / name, 8 + 3 * i)
    return out.getvalue().encode()
