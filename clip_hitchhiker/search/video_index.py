"""Searching a video index (clip_hitchhiker.search.index_format) by text, in two stages:

    1. candidates: the FAISS index over segment means (clip_hitchhiker.search.candidate_index) proposes
       `candidates` videos per query;
    2. exact: query-scoring scores each candidate over all its frames, read from the
       memory-mapped shards in one gather (candidate_scores, equal to
       query_scoring.similarity_queryscoring to float32 rounding); the best k are scored again by
       similarity_queryscoring and returned, each with the moment that its frame weights point
       at (clip_hitchhiker.moments.rule.moment_from_weights).

`exact=True` skips stage 1 and scores every video: the ground truth stage 1 is measured against.

    index = VideoIndex.open("my_index")
    index.search(["a dog catches a frisbee"], k=10, temperature=0.1)
    # -> [{"query": ..., "hits": [{"rank", "video", "score", "start", "end", "peak"}, ...]}]
"""
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from clip_hitchhiker.search import candidate_index
from clip_hitchhiker.search import index_format as fmt
from clip_hitchhiker.search.video_listing import STAT_KEYS
from clip_hitchhiker.errors import VideoIndexError
from clip_hitchhiker.moments.rule import DEFAULT_MASS, moment_from_weights, peak_frame
from clip_hitchhiker.search.queries import (check_queries, check_search_settings,
                                            check_text_embeds, check_tokenised)
from query_scoring import (queryscoring_frame_weights, similarity_meanpooling,
                           similarity_queryscoring)

__all__ = ["AGGREGATES", "DEFAULT_CANDIDATES", "VideoIndex", "candidate_scores"]

AGGREGATES = ("queryscoring", "mean")
DEFAULT_CANDIDATES = 100
_EXACT_BLOCK_FRAMES = 1 << 16   # frames scored per block by the exhaustive search
_OPEN_RETRIES = 5               # a writer may commit (and remove old files) while we open


class VideoIndex:
    """A committed index, opened read-only: the table in RAM, frames memory-mapped."""

    def __init__(self, folder, manifest, table, stage1):
        self.folder, self.manifest, self.table, self.stage1 = Path(folder), manifest, table, stage1
        self.config = manifest["config"]
        self._row_of_id = {int(i): r for r, i in enumerate(table["id"])}
        self._maps, self._model, self._model_device = {}, None, None
        self._row_of_path = None  # built when first asked (thumbnails only)

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
        table = fmt.read_table(folder, manifest)
        index = cls(folder, manifest, table, None)
        index.stage1 = index._load_stage1()
        for name in manifest["files"]:
            if name.startswith("frames-"):
                index._maps[name] = fmt.open_npy(folder, name, np.float16)
        return index

    def _load_stage1(self):
        stage1 = self.manifest["stage1"]
        try:
            data = fmt.checked_bytes(self.folder, stage1["file"], self.manifest)
            return candidate_index.deserialize(data, stage1["params"])
        except (VideoIndexError, RuntimeError) as e:
            warnings.warn(f"{e}: rebuilding the stage-1 index in memory from the means files "
                          "(run search_videos.py index again to rewrite it)", stacklevel=3)
        vectors, ids = fmt.segment_vectors(self.folder, self.table,
                                               self.config["embed_dim"], self._maps)
        index, _ = candidate_index.build(stage1["type"], vectors, ids)
        return index

    # ------------------------------------------------------------------------------------------
    # Reading

    def __len__(self):
        return len(self.table["id"])

    def frames(self, row):
        """float16 [F, D] frame embeddings of table row `row`, their crc32 checked."""
        name, offset = self.table["frames_file"][row], int(self.table["offset"][row])
        count = len(self.table["frame_times"][row])
        rows = np.asarray(self._maps[name][offset:offset + count])
        if len(rows) != count or fmt.frames_crc32(rows) != self.table["frames_crc32"][row]:
            raise VideoIndexError(f"{self.folder / name} was altered (the frames of "
                                  f"{self.table['path'][row]} fail their crc32); rebuild it: "
                                  "move the folder aside and run search_videos.py index again")
        return rows

    def recorded_file(self, path):
        """The stat fingerprint of the video file `path` as it was when indexed: {key: value}
        for video_listing.STAT_KEYS (-1 where a version 1 index did not record it)."""
        if self._row_of_path is None:
            self._row_of_path = {p: r for r, p in enumerate(self.table["path"])}
        row = self._row_of_path[path]
        return {key: int(self.table[key][row]) for key in STAT_KEYS}

    def padded_frames(self, rows):
        """(float32 [len(rows), F_max, D], bool mask [len(rows), F_max]) of table rows, padded
        with zeros."""
        counts = [len(self.table["frame_times"][r]) for r in rows]
        frames = np.zeros((len(rows), max(counts, default=1), self.config["embed_dim"]),
                          dtype=np.float16)
        mask = np.zeros(frames.shape[:2], dtype=bool)
        for i, row in enumerate(rows):
            frames[i, :counts[i]] = self.frames(row)
            mask[i, :counts[i]] = True
        # Gathered as float16, converted by torch: numpy (2.x) converts float16 element by
        # element, ~15 times slower, and that conversion was most of a query's stage 2.
        return torch.from_numpy(frames).float(), torch.from_numpy(mask)

    # ------------------------------------------------------------------------------------------
    # Searching

    def search(self, texts, k=10, temperature=0.1, aggregate="queryscoring", exact=False,
               candidates=DEFAULT_CANDIDATES, device="cpu", mass=DEFAULT_MASS, nprobe=None,
               model_file=None):
        """Search by text with the index's own model (model_file: its weights file where it is
        now, if it moved). texts: a list of queries (or one str: one query). returns:
        [{"query", "hits"}] per text. QueryError (a ValueError) for an empty query or a setting
        search_embeddings refuses, before the model is loaded, and for a query that the model's
        tokenizer reduces to no token, before any is encoded."""
        texts = check_queries(texts)
        check_search_settings(k, temperature, aggregate, candidates, mass, AGGREGATES, nprobe)
        text_embeds = self.encode_texts(texts, device, model_file)
        if torch.device(device).type == "cuda":
            self.stage1 = candidate_index.on_gpus(self.stage1)
        results = self.search_embeddings(text_embeds, k, temperature, aggregate, exact,
                                         candidates, mass, nprobe)
        return [{"query": t, "hits": hits} for t, hits in zip(texts, results)]

    def search_images(self, images, k=10, temperature=0.1, aggregate="queryscoring",
                      exact=False, candidates=DEFAULT_CANDIDATES, device="cpu",
                      mass=DEFAULT_MASS, nprobe=None, model_file=None):
        """Search by image: each image's CLIP embedding is the query, scored exactly as a text's
        is. images: paths or PIL images. returns: [{"image", "hits"}] per image ("image" is the
        path, or None for a PIL image). QueryError for a setting search_embeddings refuses,
        before the model is loaded."""
        check_search_settings(k, temperature, aggregate, candidates, mass, AGGREGATES, nprobe)
        image_embeds = self.encode_images(images, device, model_file)
        results = self.search_embeddings(image_embeds, k, temperature, aggregate, exact,
                                         candidates, mass, nprobe)
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
                          exact=False, candidates=DEFAULT_CANDIDATES, mass=DEFAULT_MASS,
                          nprobe=None):
        """text_embeds: [T, D] real, finite, no row all zero, of any scale and float dtype, D
        the index's embed_dim. k, candidates: integers >= 1; temperature > 0; mass in (0, 1];
        nprobe: None (the index's) or an integer >= 1, the inverted lists an IVF stage 1 probes
        in this call (QueryError, a ValueError, otherwise).
        returns: T lists of up to k hits {"rank", "video", "score", "start", "end", "peak",
        "duration"}, best first."""
        check_search_settings(k, temperature, aggregate, candidates, mass, AGGREGATES, nprobe)
        text_embeds = check_text_embeds(text_embeds, self.config["embed_dim"])
        if len(self) == 0:
            return [[] for _ in text_embeds]
        if exact:
            scored = self._score_all(text_embeds, k, temperature, aggregate)
        else:
            ids = candidate_index.search(self.stage1, text_embeds.numpy(), max(candidates, k),
                                         nprobe)
            scored = [self._score_rows(text_embeds[t:t + 1], self._rows(ids[t]), k, temperature,
                                       aggregate) for t in range(len(text_embeds))]
        return [self._hits(text_embeds[t], [row for row, _ in scored[t]], temperature,
                           aggregate, mass) for t in range(len(text_embeds))]

    def _hits(self, text_embed, rows, temperature, aggregate, mass):
        """The hits of the best rows, scored again together in row order, so that both stages
        and the exhaustive search give the same hits the same scores to the bit."""
        if not rows:
            return []
        rows = sorted(rows)
        frames, mask = self.padded_frames(rows)  # [k, F, D], [k, F]
        text = text_embed[None]  # [1, D]
        if aggregate == "mean":
            scores = similarity_meanpooling(text, frames, video_mask=mask)[0]
        else:
            scores = similarity_queryscoring(text, frames, temperature, video_mask=mask)[0]
        weights = queryscoring_frame_weights(text, frames, temperature, video_mask=mask)[0]
        hits = [self._hit(row, float(score), w[m].numpy(), mass)
                for row, score, w, m in zip(rows, scores, weights, mask)]
        hits.sort(key=lambda h: -h["score"])  # stable: ties keep the earlier row first
        return [{"rank": rank, **hit} for rank, hit in enumerate(hits, start=1)]

    def _rows(self, ids):
        return [self._row_of_id[int(i)] for i in ids if int(i) in self._row_of_id]

    def _scores(self, text_embeds, rows, temperature, aggregate):
        """[T, len(rows)] scores of texts against table rows."""
        frames, mask = self.padded_frames(rows)
        if aggregate == "mean":
            return similarity_meanpooling(text_embeds, frames, video_mask=mask)
        return similarity_queryscoring(text_embeds, frames, temperature, video_mask=mask)

    def _score_rows(self, text_embeds, rows, k, temperature, aggregate):
        """[(row, score)] of the best k rows for one text (text_embeds: [1, D])."""
        frames, mask = self.padded_frames(rows)
        scores = candidate_scores(text_embeds[0], frames, mask, temperature, aggregate)
        return _top_k(scores.numpy(), np.asarray(rows), k)

    def _score_all(self, text_embeds, k, temperature, aggregate):
        """The exhaustive search: every video, in blocks of about _EXACT_BLOCK_FRAMES frames."""
        counts = np.array([len(t) for t in self.table["frame_times"]])
        bounds = np.searchsorted(np.cumsum(counts), np.arange(1, counts.sum() + 1,
                                                              _EXACT_BLOCK_FRAMES))
        starts = sorted(set(bounds.tolist()) | {0})
        scores = np.concatenate([
            self._scores(text_embeds, list(range(a, b)), temperature, aggregate).numpy()
            for a, b in zip(starts, starts[1:] + [len(self)]) if a < b], axis=1)
        rows = np.arange(len(self))
        return [_top_k(scores[t], rows, k) for t in range(len(text_embeds))]

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
                "num_videos": len(self), "num_frames": int(sum(v["frames"] for v in videos)),
                "disk_bytes": sum(r["bytes"] for r in manifest["files"].values()),
                "skipped": manifest["skipped"], "videos": videos}


def candidate_scores(text_embed, frames, mask, temperature, aggregate="queryscoring", eps=1e-8):
    """Stage 2's scores of one text against candidate videos: similarity_queryscoring's (or
    similarity_meanpooling's) to float32 rounding, in three passes over the frames, not seven.
    They only choose the k best, which _hits scores again by query_scoring's own functions.

    text_embed: [D]; frames: float32 [C, F, D] read from float16 shards (so no square of them
        overflows or underflows, and query_scoring's rescaling is not needed), padding zero;
        mask: [C, F] bool, each video with at least one True frame. returns: float32 [C].
    """
    text_embed = text_embed.to(frames.dtype)
    text_unit = text_embed / text_embed.norm().clamp_min(eps)
    if aggregate == "mean":
        pooled = frames.sum(1) / mask.sum(1, keepdim=True)  # [C, D]
        return pooled @ text_unit / pooled.norm(dim=1).clamp_min(eps)
    num_videos, num_frames, dim = frames.shape
    flat = frames.view(num_videos * num_frames, dim)
    text_dot_frames = (flat @ text_unit).view(num_videos, num_frames)  # t^ . v_f
    cosines = text_dot_frames / torch.linalg.vector_norm(flat, dim=1).view(
        num_videos, num_frames).clamp_min(eps)
    cosines.masked_fill_(~mask, float("-inf"))
    # The best cosine subtracted first, so that any positive temperature works (the softmax
    # does not change).
    weights = torch.softmax((cosines - cosines.amax(1, keepdim=True)) / temperature, dim=1)
    pooled = torch.bmm(weights[:, None], frames)[:, 0]  # u = sum_f w_f v_f, [C, D]
    return (weights * text_dot_frames).sum(1) / pooled.norm(dim=1).clamp_min(eps)


def _top_k(scores, rows, k):
    """[(row, score)] of the k largest scores, ties to the earlier row (a stable order)."""
    order = np.lexsort((rows, -scores))[:k]
    return [(int(rows[i]), float(scores[i])) for i in order]


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
