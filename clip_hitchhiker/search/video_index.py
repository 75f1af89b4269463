"""Searching a video index (clip_hitchhiker.search.index_format) by text, in two stages:

    1. candidates: the FAISS index over segment means (candidate_index) proposes `candidates`
       videos per query (by default a number that grows with the index: candidate_count);
    2. scoring: each candidate is scored approximately from the codes held in memory
       (frame_codes: 69 bytes a frame at 512-d, scored as they are, no frame rebuilt:
       frame_codes.CodedFrames), with an upper bound on its exact score
       (ragged_scoring.raised_scores); the candidates are then scored exactly from their
       float16 frames (stage 1's first max(2k, 16) first, unbounded), then in the order of
       their bounds, until no bound left can reach the k-th exact score: the finalists, read
       with one pread each (index_format.FrameFiles). The best k are scored once more, each by
       ragged_scoring.video_score on its own frames (kept from their read), so that a hit's
       score does not depend on the other videos scored with it (both stages and the
       exhaustive search print the same scores to the bit), and each gets the moment its frame
       weights point at (clip_hitchhiker.moments.rule.moment_from_weights).

`exact=True` skips stage 1 and scores every video: the ground truth stage 1 is measured against.
An index of format version 1 or 2 (no codes) scores every candidate from its frames.
Memory: videos are scored in blocks of similar lengths (or one at a time), so that what
scoring holds is a constant plus the scored videos' own frames, whatever the longest video.

    index = VideoIndex.open("my_index")
    index.search(["a dog catches a frisbee"], k=10, temperature=0.1)
    # -> [{"query": ..., "hits": [{"rank", "video", "score", "start", "end", "peak"}, ...]}]
"""
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from clip_hitchhiker.search import candidate_index, frame_codes, index_codes
from clip_hitchhiker.search import index_format as fmt
from clip_hitchhiker.search.ragged_scoring import (AGGREGATES, ragged_scores, raised_scores,
                                                   unit_text, video_score)
from clip_hitchhiker.search.video_listing import STAT_KEYS
from clip_hitchhiker.errors import VideoIndexError
from clip_hitchhiker.moments.rule import DEFAULT_MASS, moment_from_weights, peak_frame
from clip_hitchhiker.search.queries import (check_queries, check_search_settings,
                                            check_text_embeds, check_tokenised)
from query_scoring import similarity_meanpooling, similarity_queryscoring

__all__ = ["AGGREGATES", "VideoIndex"]

_EXACT_BLOCK_FRAMES = 1 << 16   # padded frames scored per block by the exhaustive search
_OPEN_RETRIES = 5               # a writer may commit (and remove old files) while we open
# Finalists are scored exactly in rounds of at least this many (and 2k), best bound first.
_FINALIST_ROUND = 16
# Candidates are bounded from their codes this many frames at a time (about 700 bytes a frame
# while scoring, 6 MB a block at 512-d): what a query holds stays small.
_BOUND_BLOCK_FRAMES = 8192
# Stage 2's bound on a score: its estimate with each frame's error leaning towards the text by
# this many typical lengths: ragged_scoring.raised_scores and docs/search.md.
BOUND_SPREAD = 2.0
# The default candidates grow by DEEPEN_FACTOR while the newest of them hold a contender, up
# to DEEPEN_LIMIT times the start (from 100 to 1600).
DEEPEN_FACTOR = 1.5
DEEPEN_LIMIT = 16


class VideoIndex:
    """A committed index, opened read-only: the table and the codes in RAM, the frames read
    from their files when scored."""

    def __init__(self, folder, manifest, table, stage1, codes=None):
        self.folder, self.manifest, self.table, self.stage1 = Path(folder), manifest, table, stage1
        self.config = manifest["config"]
        # Versions 1 and 2 numbered segments with 16 bits, and recorded none.
        self.segment_bits = manifest["stage1"]["params"].get("segment_bits", 16)
        ids = np.asarray(table["id"], dtype=np.int64)
        self._id_order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._id_order]
        times = table["frame_times"]
        self._lengths = (times.lengths() if hasattr(times, "lengths")
                         else np.array([len(t) for t in times], dtype=np.int64))
        self._codes = codes
        if codes is not None:
            self._code_rows = _row_bases(table["frames_file"], codes["frame_base"]) + np.asarray(
                table["offset"], dtype=np.int64)
            self._mean_code_rows = _row_bases(table["means_file"], codes["mean_base"]) + \
                np.asarray(table["mean_row"], dtype=np.int64)
        self._files = fmt.FrameFiles(folder, [n for n in manifest["files"]
                                              if n.startswith("frames-")],
                                     self.config["embed_dim"])
        # Each row's frames file as a number (a str per row read from the column cost 2 us).
        self._frames_files, self._frames_file_of = _file_numbers(table["frames_file"])
        self._model, self._model_device, self._device_codecs = None, None, {}
        self._row_of_path = None  # built when first asked (recorded_file only)

    # ------------------------------------------------------------------------------------------
    # Opening

    @classmethod
    def open(cls, folder):
        """Open the last committed state of folder; VideoIndexError (one line, naming the file
        and the repair) if it is missing, truncated or altered."""
        folder = Path(folder)
        if not (folder / fmt.MANIFEST).is_file():
            raise VideoIndexError(f"{folder} holds no index ({fmt.MANIFEST} missing); build one "
                                  "with search_videos.py index PATH... --index "
                                  f"{folder}")
        for attempt in range(_OPEN_RETRIES):
            manifest = fmt.read_manifest(folder)
            try:
                fmt.check_files(folder, manifest)
                return cls._load(folder, manifest)
            except (VideoIndexError, FileNotFoundError):
                # A file gone because a writer committed meanwhile is not damage: read again.
                if fmt.read_manifest(folder) == manifest or attempt == _OPEN_RETRIES - 1:
                    raise
                time.sleep(0.05)

    @classmethod
    def _load(cls, folder, manifest):
        table = fmt.read_table(folder, manifest, compact=True)
        index = cls(folder, manifest, table, None, fmt.read_codes(folder, manifest))
        if index._codes is not None and not index._codes["norms_stored"]:
            started = time.perf_counter()
            index._codes["norms"] = index._all_norms()
            warnings.warn(f"{folder} has format version {manifest['version']}: the lengths of its "
                          f"coded frames were computed on opening it ("
                          f"{time.perf_counter() - started:.1f} s); run search_videos.py index "
                          "on it once to store them (an upgrade in place)", stacklevel=3)
        index.stage1 = index._load_stage1()
        return index

    def _load_stage1(self):
        stage1 = self.manifest["stage1"]
        try:
            data = fmt.checked_bytes(self.folder, stage1["file"], self.manifest)
            return candidate_index.deserialize(data, stage1["params"])
        except (VideoIndexError, RuntimeError) as e:
            warnings.warn(f"{e}: rebuilding the stage-1 index in memory from the means files "
                          "(run search_videos.py index again to rewrite it)", stacklevel=3)
        # Rebuilt with 32-bit segment numbers, whatever the file had (an older index's 16 bits
        # overflowed with a video of more than 2^19 frames).
        self.segment_bits = candidate_index.SEGMENT_BITS
        vectors, ids = fmt.segment_vectors(self.folder, self.table, self.config["embed_dim"])
        index, _ = candidate_index.build(stage1["type"], vectors, ids)
        return index

    def close(self):
        """Close the frames files and the table's (the index is unusable after)."""
        self._files.close()
        if hasattr(self.table, "close"):
            self.table.close()

    # ------------------------------------------------------------------------------------------
    # Reading

    def __len__(self):
        return len(self._lengths)

    def frames(self, row):
        """float16 [F, D] frame embeddings of table row `row`, their crc32 checked."""
        return self._read_frames([row])[0]

    def _read_frames(self, rows):
        """The frames of table rows (one pread each), each video's crc32 checked.
        returns: [float16 [F_r, D] per row], views into one buffer."""
        return _per_video(self._read_block(rows), self._lengths[np.asarray(rows, dtype=np.int64)])

    def _spans(self, rows):
        """[(frames file, first row, rows)] of table rows (int64 [n])."""
        return list(zip([self._frames_files[f] for f in self._frames_file_of[rows].tolist()],
                        np.asarray(self.table["offset"])[rows].tolist(),
                        self._lengths[rows].tolist()))

    def _prefetch(self, rows):
        """Start the disk reads of table rows' frames (returns at once)."""
        self._files.prefetch(self._spans(np.asarray(rows, dtype=np.int64)))

    def _read_block(self, rows, advise=True):
        """float16 [N, D]: the frames of table rows one after the other (one pread each), each
        video's crc32 checked (advise: False where they were prefetched already)."""
        rows = np.asarray(rows, dtype=np.int64)
        spans = self._spans(rows)
        data = self._files.read(spans, advise)
        end = 0
        for row, (_, _, length), crc in zip(rows.tolist(), spans,
                                            np.asarray(self.table["frames_crc32"])[rows].tolist()):
            end += length
            if fmt.frames_crc32(data[end - length:end]) != crc:
                name = self.table["frames_file"][row]
                raise VideoIndexError(f"{self.folder / name} was altered (the frames of "
                                      f"{self.table['path'][row]} fail their crc32); rebuild it: "
                                      "move the folder aside and run search_videos.py index again")
        return data

    def recorded_file(self, path):
        """The stat fingerprint of the video file `path` as it was when indexed: {key: value}
        for video_listing.STAT_KEYS (-1 where a version 1 index did not record it)."""
        if self._row_of_path is None:
            self._row_of_path = {p: r for r, p in enumerate(self.table["path"])}
        row = self._row_of_path[path]
        return {key: int(self.table[key][row]) for key in STAT_KEYS}

    def padded_frames(self, rows):
        """(float32 [len(rows), F_max, D], bool mask [len(rows), F_max]) of table rows, padded
        with zeros: memory len(rows) x the longest of them; for a few videos of like lengths."""
        counts = self._lengths[np.asarray(rows, dtype=np.int64)]
        frames = np.zeros((len(rows), max(counts, default=1), self.config["embed_dim"]),
                          dtype=np.float16)
        mask = np.zeros(frames.shape[:2], dtype=bool)
        for i, video in enumerate(self._read_frames(rows)):
            frames[i, :counts[i]] = video
            mask[i, :counts[i]] = True
        return _float32(frames), torch.from_numpy(mask)

    # ------------------------------------------------------------------------------------------
    # Searching

    def search(self, texts, k=10, temperature=0.1, aggregate="queryscoring", exact=False,
               candidates=None, device="cpu", mass=DEFAULT_MASS, nprobe=None,
               model_file=None):
        """Search by text with the index's own model (on `device`, where stage 2 runs too when it
        is a GPU; model_file: its weights file where it is now, if it moved). texts: a list of
        queries (or one str: one query). returns: [{"query", "hits"}] per text. QueryError (a
        ValueError) for an empty query or a setting search_embeddings refuses, before the model
        is loaded, and for a query that the model's tokenizer reduces to no token, before any is
        encoded."""
        texts = check_queries(texts)
        check_search_settings(k, temperature, aggregate, candidates, mass, AGGREGATES, nprobe)
        text_embeds = self.encode_texts(texts, device, model_file)
        if torch.device(device).type == "cuda":
            self.stage1 = candidate_index.on_gpus(self.stage1)
        results = self.search_embeddings(text_embeds, k, temperature, aggregate, exact,
                                         candidates, mass, nprobe, device)
        return [{"query": t, "hits": hits} for t, hits in zip(texts, results)]

    def search_images(self, images, k=10, temperature=0.1, aggregate="queryscoring",
                      exact=False, candidates=None, device="cpu",
                      mass=DEFAULT_MASS, nprobe=None, model_file=None):
        """Search by image: each image's CLIP embedding is the query, scored exactly as a text's
        is. images: paths or PIL images. returns: [{"image", "hits"}] per image ("image" is the
        path, or None for a PIL image). QueryError for a setting search_embeddings refuses,
        before the model is loaded."""
        check_search_settings(k, temperature, aggregate, candidates, mass, AGGREGATES, nprobe)
        image_embeds = self.encode_images(images, device, model_file)
        results = self.search_embeddings(image_embeds, k, temperature, aggregate, exact,
                                         candidates, mass, nprobe, device)
        return [{"image": str(Path(i).resolve()) if isinstance(i, (str, Path)) else None,
                 "hits": hits} for i, hits in zip(images, results)]

    def encode_texts(self, texts, device="cpu", model_file=None):
        """float32 CPU [len(texts), D], by the model the index was built with, read from
        model_file where its weights file has moved (it must hold the same weights).
        QueryError for a text that its tokenizer reduces to no token."""
        from clip_hitchhiker.models.clip_models import encode_captions

        model = self._loaded_model(device, model_file)
        check_tokenised(texts, model.tokenless(texts), self.config["model"])
        with torch.inference_mode():
            return encode_captions(model, list(texts), torch.device(device))

    def encode_images(self, images, device="cpu", model_file=None):
        """float32 CPU [len(images), D]: each image (a path or a PIL image) preprocessed as the
        index's frames were (the recorded resize, crop and antialias) and encoded by its model."""
        from clip_hitchhiker.search.query_embeddings import frame_preprocess_of, image_tensor

        model = self._loaded_model(device, model_file)
        preprocess = frame_preprocess_of(model, self.config["preprocess"], self.folder)
        with torch.inference_mode():
            return torch.cat([torch.zeros(0, model.embed_dim)] + [
                model.encode_image(preprocess(image_tensor(i).to(device))).float().cpu()
                for i in images])

    def _loaded_model(self, device, model_file=None):
        """The index's own model on device, loaded once (and checked to be that model), from
        model_file where its weights file has moved (it must hold the same weights)."""
        from clip_hitchhiker.models.backends import content_id, load_model
        from clip_hitchhiker.search.index_model import search_model
        from clip_hitchhiker.torchrun import explicit_device

        device = explicit_device(str(device))
        if self._model is None or self._model_device != (device, model_file):
            config = self.config
            backend, model, pretrained = search_model(self.folder, config, model_file)
            self._model = load_model(backend, model, device, pretrained)
            self._model_device = (device, model_file)
            if content_id(self._model.model_id) != content_id(config["model_id"]):
                raise VideoIndexError(
                    f"the model {model} is not the one {self.folder} was built with "
                    f"({self._model.model_id} now, {config['model_id']} then); restore that "
                    "file or rebuild the index")
        return self._model

    def search_embeddings(self, text_embeds, k=10, temperature=0.1, aggregate="queryscoring",
                          exact=False, candidates=None, mass=DEFAULT_MASS, nprobe=None,
                          device="cpu", stats=None):
        """text_embeds: [T, D] real, finite, no row all zero, of any scale and float dtype, D
        the index's embed_dim. k: an integer >= 1; temperature > 0; mass in (0, 1]; nprobe: None
        (the index's) or an integer >= 1, the inverted lists an IVF stage 1 probes in this call
        (QueryError, a ValueError, otherwise). returns: T lists of up to k hits {"rank",
        "video", "score", "start", "end", "peak", "duration", "peak_frame"}, best first.

        candidates: videos stage 1 proposes per query (an integer >= 1). None (the default):
        first candidate_index.candidate_count of the index's size, then DEEPEN_FACTOR times as
        many while the newest of those proposed (the last third) hold a video whose bound
        reaches the k-th exact score (up to DEEPEN_LIMIT times the start): the proposals go as
        deep as the query's look-alikes do.
        device: where stage 2 scores; the hits' own scores are always computed on the CPU.
        stats: a list, to which each query's {"candidates", "finalists"} (videos stage 2 scored
        from codes, and from their frames) is appended (diagnostics: bench_search.py)."""
        check_search_settings(k, temperature, aggregate, candidates, mass, AGGREGATES, nprobe)
        text_embeds = check_text_embeds(text_embeds, self.config["embed_dim"])
        if len(self) == 0:
            return [[] for _ in text_embeds]
        if exact:
            best = self._exhaustive(text_embeds, k, temperature, aggregate)
        else:
            start = max(candidates or candidate_index.candidate_count(len(self)), k)
            limit = start if candidates else start * DEEPEN_LIMIT
            # Stage 1 asked first for what the first deepening takes (its cost grows with the
            # count asked), then again, per query, only when a query goes deeper.
            first = min(limit, _deeper(start))
            ids = candidate_index.search(self.stage1, text_embeds.numpy(), first, nprobe,
                                         self.segment_bits)
            results = []
            for t in range(len(text_embeds)):
                stage2 = _Stage2(self, text_embeds[t], k, temperature, aggregate,
                                 torch.device(device))
                proposals = _Proposals(self, text_embeds[t], ids[t], first, limit, nprobe)
                best = stage2.best(proposals, start)
                # Each query's hits at once, from the frames stage 2 kept: a batch of queries
                # never holds more than one query's.
                results.append(self._hits(text_embeds[t], best, temperature, aggregate, mass,
                                          stage2.frames))
                if stats is not None:
                    stats.append({"candidates": max(len(stage2.rows), len(stage2.scored)),
                                  "finalists": len(stage2.scored)})
            return results
        return [self._hits(text_embeds[t], rows, temperature, aggregate, mass)
                for t, rows in enumerate(best)]

    def _rows(self, ids):
        """Table rows of video ids (ids no longer in the table are skipped)."""
        ids = np.asarray(ids, dtype=np.int64)
        places = np.searchsorted(self._sorted_ids, ids).clip(max=len(self._sorted_ids) - 1)
        found = self._sorted_ids[places] == ids
        return self._id_order[places[found]]

    def _code_places(self, rows):
        """Where the codes of table rows are: (int64 [N] rows of codes["frames"], their frames
        one video after the other; int64 [S] rows of codes["means"], their segments likewise;
        int64 [N] each frame's segment among those S)."""
        lengths = self._lengths[rows]
        segments = -(-lengths // candidate_index.SEGMENT_FRAMES)
        frame_rows = _ranges(self._code_rows[rows], lengths)
        mean_rows = _ranges(self._mean_code_rows[rows], segments)
        # Each frame's segment among the gathered means: its video's first + frame // 8.
        within = np.arange(len(frame_rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        segment_of_frame = np.repeat(np.cumsum(segments) - segments, lengths) + \
            within // candidate_index.SEGMENT_FRAMES
        return frame_rows, mean_rows, segment_of_frame

    def _decoded(self, rows, device):
        """Stage 2's approximate frames of table rows, rebuilt: (float32 [N, D] v~, float32 [N]
        error bounds, lengths [len(rows)]), on device."""
        codes, lengths = self._codes, torch.as_tensor(self._lengths[rows])
        frame_rows, mean_rows, segment_of_frame = self._code_places(rows)
        frame_codes_rows = codes["frames"][frame_rows]
        subvectors = len(codes["codec"].centroids)
        decoded = frame_codes.decode_frames(
            self._codec_on(device), torch.from_numpy(codes["means"][mean_rows]).to(device),
            torch.from_numpy(frame_codes_rows[:, :subvectors]).to(device),
            torch.from_numpy(segment_of_frame).to(device))
        errors = index_codes.error_norms(
            torch.from_numpy(frame_codes_rows[:, subvectors]).to(device), codes["error_step"])
        return decoded, errors, lengths.to(device)

    def _coded(self, rows, device):
        """Stage 2's view of table rows from their codes: (frame_codes.CodedFrames, float32 [N]
        error bounds), on device."""
        codes = self._codes
        frame_rows, mean_rows, segment_of_frame = self._code_places(rows)
        block = codes["frames"][frame_rows]
        subvectors = len(codes["codec"].centroids)
        move = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        norms = self._norms_of(block, frame_rows)
        coded = frame_codes.CodedFrames(
            self._codec_on(device), move(codes["means"][mean_rows]), move(block[:, :subvectors]),
            move(segment_of_frame), move(self._lengths[rows]), move(norms))
        return coded, index_codes.error_norms(move(block[:, subvectors]), codes["error_step"])

    def _all_norms(self):
        """float32 [rows of codes["frames"]]: |v~_f| of every frame of the table (0 elsewhere),
        from the frames rebuilt from their codes (a version 3 index stores none)."""
        codes = self._codes
        subvectors = len(codes["codec"].centroids)
        norms = np.zeros(len(codes["frames"]), np.float32)
        for block in _frame_blocks(np.arange(len(self)), self._lengths, 1 << 16):
            frame_rows, mean_rows, segment_of_frame = self._code_places(block)
            norms[frame_rows] = frame_codes.frame_norms(
                codes["codec"], codes["means"][mean_rows],
                codes["frames"][frame_rows][:, :subvectors], segment_of_frame).numpy()
        return norms

    def _norms_of(self, block, frame_rows):
        """float32 [N]: |v~_f| of the frames at frame_rows of codes["frames"] (block: those
        rows)."""
        if self._codes["norms_stored"]:
            return index_codes.stored_norms(block)
        return self._codes["norms"][frame_rows]

    def _codec_on(self, device):
        """The codec with its arrays on device (kept there: a few hundred kB)."""
        if device not in self._device_codecs:
            self._device_codecs[device] = self._codes["codec"].on(device)
        return self._device_codecs[device]

    def _exhaustive(self, text_embeds, k, temperature, aggregate):
        """Every video scored (by query_scoring's own functions), in blocks of videos of like
        lengths of at most _EXACT_BLOCK_FRAMES padded frames (or one video): [[row] per text]."""
        best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in text_embeds]
        for block in _length_blocks(self._lengths, self._file_order(), _EXACT_BLOCK_FRAMES):
            frames, mask = self.padded_frames(block)
            if aggregate == "mean":
                scores = similarity_meanpooling(text_embeds, frames, video_mask=mask)
            else:
                scores = similarity_queryscoring(text_embeds, frames, temperature,
                                                 video_mask=mask)
            for t, row_scores in enumerate(scores.numpy()):
                kept = _top_k(np.concatenate([best[t][0], row_scores]),
                              np.concatenate([best[t][1], block]), k)
                best[t] = (np.array([s for _, s in kept], np.float32),
                           np.array([r for r, _ in kept], np.int64))
        return [list(rows) for _, rows in best]

    def _file_order(self):
        """Table rows in the order of their frames in the files (sequential reads)."""
        names = np.asarray(_row_bases(self.table["frames_file"], None))
        return np.lexsort((np.asarray(self.table["offset"]), names))

    def _hits(self, text_embed, rows, temperature, aggregate, mass, kept=None):
        """The hits of the best rows, each scored again on its own frames alone (never with
        other videos, whose presence could change the rounding), so that both stages and the
        exhaustive search give a hit the same score to the bit; ties keep the earlier row
        first. The frame weights (query-scoring's, whatever the aggregate) give the moment.
        kept: {row: float16 [F, D]} frames read already (stage 2's), the others are read."""
        text = unit_text(text_embed)
        hits = []
        rows = sorted(int(r) for r in rows)
        kept = kept or {}
        missing = [r for r in rows if r not in kept]
        read = dict(zip(missing, self._read_frames(missing))) if missing else {}
        for row, frames in ((r, kept[r] if r in kept else read[r]) for r in rows):
            score, weights = video_score(text, _float32(frames), temperature,
                                         aggregate)
            hits.append(self._hit(row, score, weights.numpy(), mass))
        hits.sort(key=lambda h: -h["score"])  # stable: ties keep the earlier row first
        return [{"rank": rank, **hit} for rank, hit in enumerate(hits, start=1)]

    def _hit(self, row, score, weights, mass):
        """weights: [F] the query-scoring weights of the row's frames."""
        times, duration = self.table["frame_times"][row], float(self.table["duration"][row])
        moment = moment_from_weights(weights, times, duration, mass)
        return {"video": self.table["path"][row], "score": score, **moment,
                "duration": duration, "peak_frame": peak_frame(weights)}

    # ------------------------------------------------------------------------------------------
    # Reporting

    def info(self, with_times=True):
        """A plain dict: model, sampling, counts, skipped videos, disk use (and frame times,
        full precision, in seconds)."""
        manifest = self.manifest
        videos = [{"video": p, "duration": float(d), "frames": len(t),
                   **({"times": [float(x) for x in t]} if with_times else {})}
                  for p, d, t in zip(self.table["path"], self.table["duration"],
                                     self.table["frame_times"])]
        return {"index": str(self.folder.resolve()), "generation": manifest["generation"],
                "config": self.config, "stage1": manifest["stage1"],
                "version": manifest["version"], "codes": manifest.get("codes") and {
                    k: manifest["codes"][k] for k in ("trained_on", "error_step")},
                "num_videos": len(self), "num_frames": int(sum(v["frames"] for v in videos)),
                "disk_bytes": sum(r["bytes"] for r in manifest["files"].values()),
                "skipped": manifest["skipped"], "videos": videos}


class _Stage2:
    """Stage 2 for one query: candidates (table rows, best first by stage 1) scored from their
    codes, then exactly, in the order of their bounds, until no bound left reaches the k-th
    exact score (the threshold rule); stage 1's first round's worth are scored exactly without
    a bound; an index without codes scores them all exactly."""

    def __init__(self, index, text_embed, k, temperature, aggregate, device):
        self.index, self.k, self.device = index, k, device
        self.temperature, self.aggregate = temperature, aggregate
        self.text = unit_text(text_embed).to(device)
        self.rows, self.upper = np.zeros(0, np.int64), np.zeros(0, np.float32)
        self.scored = {}  # row: exact score
        self.threshold = -np.inf  # the k-th best exact score so far
        # The float16 frames of the rows among the best k so far (at most k videos', ties
        # aside): the hits are not read again.
        self.frames = {}
        self._advised = set()  # rows whose frames the disk was asked for

    def _prefetch(self, rows):
        """Ask the disk for the frames of rows not asked for before in this query."""
        new = [row for row in np.asarray(rows, dtype=np.int64).tolist()
               if row not in self._advised]
        self._advised.update(new)
        if new:
            self.index._prefetch(new)

    def best(self, proposals, start):
        """proposals: stage 1's candidate rows, best first (_Proposals); start: how many to take
        first. DEEPEN_FACTOR times as many are taken while the newest of those taken (the last
        1 - 1 / DEEPEN_FACTOR of them) hold a contender (a bound, or without codes an exact
        score, that reaches the k-th best exact score).
        returns: [row] of the best k, best first."""
        ranked = proposals.first(start)
        # Stage 1's best proposals are mostly finalists: the disk reads their frames while
        # stage 2 bounds the candidates. The first three rounds' worth (bench_search.py, 100
        # queries: 58 of the first 60 became finalists at 100k x 60 frames, 56 at 1M x 16).
        first_round = max(2 * self.k, _FINALIST_ROUND)
        self._prefetch(ranked[:3 * first_round])
        count, done = len(ranked), 0
        while True:
            if self.index._codes is None or count <= first_round:
                self._score_exactly(ranked[done:count], bound=True)
            else:
                # Stage 1's first round's worth are the first round, never bounded: a round
                # scores that many exactly anyway, and they were finalists almost always
                # (bench_search.py, 100 queries: 20.0 of the first 20 at 100k, 19.2 at 1M).
                self._bound(ranked[done:count], unbounded=0 if done else first_round)
                self._finalists()
            # The newest of stage 1's proposals still hold a contender: look deeper.
            if not (self.upper[int(count / DEEPEN_FACTOR):count] >= self.threshold).any():
                return self._top()
            ranked = proposals.first(_deeper(count))
            if len(ranked) <= count:  # stage 1 has no more
                return self._top()
            done, count = count, len(ranked)

    def _bound(self, rows, unbounded=0):
        """Add rows with the upper bounds of their scores from the codes; the first
        `unbounded` with an infinite one (scored exactly first, their exact scores then taking
        its place)."""
        unbounded = min(unbounded, len(rows))
        bounded = rows[unbounded:]
        order = self._by_length(bounded)
        upper = [np.zeros(0, np.float32)]
        for block in _frame_blocks(bounded[order], self.index._lengths, _BOUND_BLOCK_FRAMES):
            coded, errors = self.index._coded(block, self.device)
            upper.append(raised_scores(self.text, coded, errors, None, self.temperature,
                                       self.aggregate, BOUND_SPREAD).cpu().numpy())
        self.rows = np.concatenate([self.rows, rows])
        self.upper = np.concatenate([self.upper, np.full(unbounded, np.inf, np.float32),
                                     _unsorted(np.concatenate(upper), order)])

    def _by_length(self, rows):
        """The order of rows by their lengths (scoring takes one batched product per length)."""
        return np.argsort(self.index._lengths[rows], kind="stable")

    def _finalists(self):
        """Score the unscored rows exactly, best bound first, in rounds (each twice the last),
        while a bound reaches the k-th best exact score."""
        size = max(2 * self.k, _FINALIST_ROUND)
        while True:
            waiting = np.array([r not in self.scored for r in self.rows.tolist()], dtype=bool)
            waiting &= self.upper >= self.threshold
            if not waiting.any():
                return
            order = np.flatnonzero(waiting)[np.argsort(-self.upper[waiting], kind="stable")]
            # The disk reads this round's frames and the next round's together, the next
            # while this one is scored: a cold page cache costs one wait, not one a round.
            self._prefetch(self.rows[order[:3 * size]])
            self._score_exactly(self.rows[order[:size]])
            size *= 2

    def _score_exactly(self, rows, bound=False):
        """Score rows from their frames (bound: they are new candidates, whose exact scores are
        their bounds)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        order = self._by_length(rows)
        ordered = rows[order]
        self._prefetch(ordered)
        block, lengths = self.index._read_block(ordered, advise=False), \
            self.index._lengths[ordered]
        # Converted by torch: numpy converts float16 element by element, 15 times slower.
        scores = _unsorted(ragged_scores(self.text, _float32(block, self.device),
                                         torch.as_tensor(lengths).to(self.device),
                                         self.temperature, self.aggregate).cpu().numpy(), order)
        self.scored.update(zip(rows.tolist(), scores.tolist()))
        if bound:  # in stage 1's order, as the deepening rule reads them
            self.rows = np.concatenate([self.rows, rows])
            self.upper = np.concatenate([self.upper, scores])
        unbounded = np.isposinf(self.upper)
        if unbounded.any():  # rows never bounded: their exact scores are their bounds now
            unbounded &= np.isin(self.rows, rows)
            self.upper[unbounded] = [self.scored[r] for r in self.rows[unbounded].tolist()]
        if len(self.scored) >= self.k:
            self.threshold = sorted(self.scored.values(), reverse=True)[self.k - 1]
        self._keep_frames(ordered, block, lengths)

    def _keep_frames(self, rows, block, lengths):
        """Keep (copied out of block) the frames of rows that reach the k-th best exact score,
        and drop those of earlier rows that no longer do."""
        for row, frames in zip(rows.tolist(), _per_video(block, lengths)):
            if self.scored[row] >= self.threshold:
                self.frames[row] = frames.copy()
        self.frames = {row: frames for row, frames in self.frames.items()
                       if self.scored[row] >= self.threshold}

    def _top(self):
        rows = np.fromiter(self.scored, dtype=np.int64, count=len(self.scored))
        scores = np.fromiter(self.scored.values(), dtype=np.float64, count=len(self.scored))
        return _best_rows(scores, rows, self.k)


def _deeper(count):
    """The next count of candidates after count."""
    return math.ceil(count * DEEPEN_FACTOR)


def _float32(frames, device="cpu"):
    """float16 numpy [..] as a float32 torch copy on device (copied into float32: 8 times faster
    here than torch's .float(), the same values)."""
    if torch.device(device).type != "cpu":
        return torch.from_numpy(frames).to(device).float()
    # Into an array numpy allocates: torch's own fresh CPU buffer made the copy 4-8 times slower.
    return torch.from_numpy(np.empty(frames.shape, np.float32)).copy_(torch.from_numpy(frames))


def _per_video(block, lengths):
    """[F_r, D] views of block [N, D], the frames of videos of lengths [C] one after the other."""
    return [block[end - length:end] for end, length in
            zip(np.cumsum(lengths).tolist(), np.asarray(lengths).tolist())]


def _frame_blocks(rows, lengths, budget):
    """rows in consecutive blocks of at most `budget` frames (or one longer video alone)."""
    ends = np.cumsum(lengths[rows])
    first = 0
    while first < len(rows):
        base = ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(ends, base + budget, side="right")))
        yield rows[first:last]
        first = last


def _unsorted(values, order):
    """values [n] of the rows rows[order]: as values of rows."""
    out = np.empty_like(values)
    out[order] = values
    return out


class _Proposals:
    """Stage 1's ranking of one query, asked for again with a larger count only when stage 2
    takes more of it than was asked (the ranking with a larger count extends the smaller one:
    videos in the order of their best segment)."""

    def __init__(self, index, text_embed, ids, asked, limit, nprobe):
        self.index, self.text_embed, self.limit, self.nprobe = index, text_embed, limit, nprobe
        self.asked, self.rows = asked, index._rows(ids)

    def first(self, count):
        """int64 [<= count]: the first `count` proposals (fewer where stage 1 has no more
        within the limit)."""
        count = min(count, self.limit)
        if count > len(self.rows) and self.asked < self.limit:
            self.asked = min(self.limit, 4 * count)
            ids = candidate_index.search(self.index.stage1, self.text_embed.numpy()[None],
                                         self.asked, self.nprobe, self.index.segment_bits)[0]
            # Rows taken already keep their places (a tie may order the new ranking
            # differently), the others follow in the new ranking's order.
            more = self.index._rows(ids)
            self.rows = np.concatenate([self.rows, more[~np.isin(more, self.rows)]])
        return self.rows[:count]


def _file_numbers(names):
    """(sorted distinct names, int32 [rows] each row's name's place among them). names: a table
    column of file names, with few distinct ones."""
    if hasattr(names, "array"):  # an Arrow column: encoded once, not a str per row
        encoded = names.array.dictionary_encode()
        distinct, which = encoded.dictionary.to_pylist(), encoded.indices.to_numpy()
    else:
        distinct = sorted(set(names))
        position = {n: i for i, n in enumerate(distinct)}
        which = np.array([position[n] for n in names], dtype=np.int64)
    order = sorted(range(len(distinct)), key=lambda i: distinct[i])
    place = np.argsort(order)
    return ([distinct[i] for i in order],
            place[which].astype(np.int32) if len(distinct) else np.zeros(0, np.int32))


def _row_bases(names, base):
    """int64 [rows]: base[name] of each row's file name (base None: the name's number in sorted
    order). names: a table column of file names, with few distinct ones."""
    distinct, number = _file_numbers(names)
    if base is None:
        return number.astype(np.int64)
    return np.array([base[n] for n in distinct], dtype=np.int64)[number] if distinct else \
        np.zeros(0, np.int64)


def _ranges(starts, counts):
    """int64 [sum(counts)]: starts[0] .. starts[0] + counts[0] - 1, then the next range, ..."""
    counts = np.asarray(counts, dtype=np.int64)
    firsts = np.repeat(np.asarray(starts, dtype=np.int64) - (np.cumsum(counts) - counts), counts)
    return firsts + np.arange(int(counts.sum()))


def _length_blocks(lengths, order, budget):
    """Blocks of rows (from `order`, grouped by lengths within a factor 2) whose padded frames,
    count x longest, stay within budget (a longer video alone). Yields int64 arrays."""
    buckets = {}
    for row in order:
        buckets.setdefault(int(lengths[row]).bit_length(), []).append(row)
    for _, rows in sorted(buckets.items()):
        block, longest = [], 0
        for row in rows:
            if block and (len(block) + 1) * max(longest, lengths[row]) > budget:
                yield np.array(block, dtype=np.int64)
                block, longest = [], 0
            block.append(row)
            longest = max(longest, int(lengths[row]))
        if block:
            yield np.array(block, dtype=np.int64)


def _top_k(scores, rows, k):
    """[(row, score)] of the k largest scores, ties to the earlier row (a stable order)."""
    order = np.lexsort((rows, -scores))[:k]
    return [(int(rows[i]), float(scores[i])) for i in order]


def _best_rows(scores, rows, k):
    return [row for row, _ in _top_k(np.asarray(scores), np.asarray(rows), k)]


def read_frame_near(video, time_s):
    """uint8 RGB [H, W, 3]: the frame of video (a path or a binary file object) nearest time_s."""
    import av

    with av.open(video if hasattr(video, "read") else str(video)) as container:
        stream = container.streams.video[0]
        if time_s > 2 and stream.time_base:
            # To the key frame before (time - 2 s), so that a long video is not decoded whole.
            container.seek(int((time_s - 2) / stream.time_base), stream=stream)
        best = None
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base) if frame.pts is not None else frame.time
            if best is None or abs(t - time_s) < best[0]:
                best = (abs(t - time_s), frame.to_ndarray(format="rgb24"))
            elif t > time_s:
                break
    if best is None:
        raise VideoIndexError(f"{getattr(video, 'name', video)} has no frame to show")
    return best[1]
