"""The local search page over one index (`search_videos.py serve`): a Starlette app that serves
one page of plain HTML, CSS and JavaScript (./static, no build step, nothing from the network)
and the JSON API it uses. Read-only: the index is opened once, its model loaded once.

    GET  /api/search?q=TEXT&k=N     what `search --json` prints, each hit with id, times, weights
    POST /api/search?k=N            the same for an image (the request body)
    GET  /api/similar/{id}?start=&end=&k=   "more like this": the moment's mean frame embedding
    GET  /api/video/{id}            the video file, with HTTP Range requests
    GET  /api/play/{id}?start=&end= where the page plays the moment: the video, or a clip
    GET  /api/clip/{id}?start=&end= the moment as an MP4 (made on demand, cached; Range too)
    GET  /api/thumbnail/{id}?t=S    a JPEG of the frame nearest S seconds
    GET  /api/info                  the index's model, sampling and counts

Security: a video is named by its id in the index's table, never by a path from the request,
and opened only if it is still the file that was indexed (same size, mtime, inode and ctime).
Requests carry the token where one is set; a loopback-only server also refuses Host headers
other than its own names (DNS rebinding). Sizes are bounded; errors are JSON.
"""
import asyncio
import hmac
import importlib.resources
import ipaddress
import json
import math
import mimetypes
import os
import re
import stat
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

from clip_hitchhiker.errors import ConfigError, HitchhikerError
from clip_hitchhiker.moments.rule import DEFAULT_MASS
from clip_hitchhiker.search.clip_cache import (DEFAULT_MAX_BYTES, ClipCache, clip_key,
                                               temporary_file)
from clip_hitchhiker.search.moment_clips import clip_name
from clip_hitchhiker.search.queries import check_queries
from clip_hitchhiker.search.search_report import rounded_for_print, search_report
from clip_hitchhiker.search.video_listing import STAT_KEYS
from clip_hitchhiker.search.video_index import AGGREGATES
from query_scoring import queryscoring_frame_weights

MAX_QUERY_CHARS = 1000        # CLIP reads 77 tokens; a longer text is a mistake or an attack
MAX_IMAGE_BYTES = 20 << 20
MAX_K = 500
MAX_CANDIDATES = 10_000
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/static/style.css": ("style.css", "text/css; charset=utf-8")}
# The page loads nothing but its own files (and the dropped image's blob: preview), and no other
# site may frame it (clicks on it from under another page).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                           "object-src 'none'; base-uri 'none'; "
                                           "frame-ancestors 'none'",
                "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # as Host headers write them
_CHUNK = 1 << 18


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a one-line message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------------------
# Pure helpers


def parse_range(header, size):
    """The (first, last) byte offsets, inclusive, that an HTTP Range header asks of a file of
    `size` bytes; None to send the whole file (no header, or one that RFC 9110 lets a server
    ignore: several ranges, other units, an invalid spec); RequestError(416) if the range holds
    no byte of the file."""
    match = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", (header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # "-N": the last N bytes
        if int(last) == 0 or size == 0:
            raise RequestError(416, f"range {header!r} selects no byte of {size}")
        return max(0, size - int(last)), size - 1
    if last != "" and int(last) < int(first):
        return None
    if int(first) >= size:
        raise RequestError(416, f"range {header!r} selects no byte of {size}")
    return int(first), size - 1 if last == "" else min(int(last), size - 1)


def number(params, name, default, low, high, kind=float):
    """params[name] as `kind`, within [low, high]; RequestError(400) naming it otherwise."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise RequestError(400, f"{name} must be a number, got {raw!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise RequestError(400, f"{name} must be in [{low}, {high}], got {raw!r}")
    return value


def search_options(params):
    """The search options of a request's query string, checked as the CLI checks them."""
    aggregate = params.get("aggregate") or "queryscoring"
    if aggregate not in AGGREGATES:
        raise RequestError(400, f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    temperature = number(params, "temperature", 0.1, 1e-6, 1e6)
    mass = number(params, "mass", DEFAULT_MASS, 1e-6, 1.0)
    return {"k": number(params, "k", 10, 1, MAX_K, int), "temperature": temperature,
            "aggregate": aggregate, "exact": params.get("exact") in ("1", "true"),
            "candidates": number(params, "candidates", None, 1, MAX_CANDIDATES,
                                 int), "mass": mass}


# ----------------------------------------------------------------------------------------------
# The service: the index, its model and the files the server may read


class SearchService:
    """One index opened read-only, its model loaded once, and one scorer thread that runs every
    search, one at a time (the model, FAISS's and torch's thread pools and the index's caches
    are shared by every request; several tabs' requests wait their turn). One thread, not a lock
    over the request threads: OpenMP's thread count is per thread, so FAISS would run each
    request's search on every core (3x slower on a busy 2-core machine); the scorer thread takes
    the creating thread's torch and FAISS thread counts.

    encode_texts: texts -> float32 [T, D]; by default the index's own model on `device`.
    cache_dir: where clips for the browser are kept (never the index folder: it stays
    read-only), at most cache_max_bytes of them (clip_cache.ClipCache). """

    def __init__(self, index, cache_dir, device="cpu", encode_texts=None,
                 cache_max_bytes=DEFAULT_MAX_BYTES):
        self.index, self.device = index, device
        self.cache_dir = Path(cache_dir)
        self.clips = ClipCache(self.cache_dir, cache_max_bytes)
        self._encode_texts = encode_texts or (lambda texts: index.encode_texts(texts, device))
        self._scorer = ThreadPoolExecutor(1, thread_name_prefix="scorer",
                                          initializer=_set_threads,
                                          initargs=(torch.get_num_threads(), _faiss_threads()))
        table = index.table
        self._row_of_id = {int(i): r for r, i in enumerate(table["id"])}
        self._row_of_path = {p: r for r, p in enumerate(table["path"])}
        self._thumbnails = _LRU(256)
        self._playable = {}
        self._clip_lock = threading.Lock()

    def warm_up(self):
        """Load the model (and page in what one query touches) before the first request."""
        def warm_up():
            self._encode_texts(["a video"])
            self.index.search_embeddings(torch.ones(1, self.index.config["embed_dim"]), k=1)

        self.submit(warm_up).result()

    def submit(self, job):
        """A concurrent Future of job() run on the scorer thread, after the jobs before it."""
        return self._scorer.submit(job)

    # Searching: each *_job checks the request where it arrives and returns the job to submit;
    # search_* run it and wait.

    def search_text(self, text, options):
        return self.submit(self.text_job(text, options)).result()

    def search_image(self, data, options):
        return self.submit(self.image_job(data, options)).result()

    def search_similar(self, video_id, start, end, options):
        return self.submit(self.similar_job(video_id, start, end, options)).result()

    def text_job(self, text, options):
        if not text.strip():
            raise RequestError(400, "q is empty: type what to search for")
        if len(text) > MAX_QUERY_CHARS:
            raise RequestError(413, f"q has {len(text)} characters, more than "
                                    f"{MAX_QUERY_CHARS}")
        check_queries([text])  # invisible characters only: QueryError, answered with a 400
        return lambda: self._report({"query": text}, self._encode_texts([text]), options)

    def image_job(self, data, options):
        return lambda: self._report({"image": None},
                                    self.index.encode_images([_image(data)], self.device),
                                    options)

    def similar_job(self, video_id, start, end, options):
        from clip_hitchhiker.search.query_embeddings import moment_embedding

        like = {"id": video_id, "video": self.index.table["path"][self.row(video_id)],
                "start": start, "end": end}
        return lambda: self._report(
            {"like": like}, moment_embedding(self.index, video_id, start, end)[None], options)

    def _report(self, query, embeds, options):
        """The CLI's report for one query embedding [1, D], each hit with id, times, weights."""
        search = {k: v for k, v in options.items() if k != "k"}
        hits = self.index.search_embeddings(embeds, options["k"], search["temperature"],
                                            search["aggregate"], search["exact"],
                                            search["candidates"], search["mass"],
                                            device=self.device)[0]
        self._add_strips(hits, embeds, search["temperature"])
        return rounded_for_print(search_report(self.index.folder, [{**query, "hits": hits}],
                                               search["aggregate"], search["temperature"],
                                               search["exact"]))

    def _add_strips(self, hits, embeds, temperature):
        """Each hit gets "id", "times" and "weights": the query-scoring weight of each of its
        video's frames (embeds: [1, D]), each video's on its own frames."""
        if not hits:
            return
        table = self.index.table
        for hit in hits:
            row = self._row_of_path[hit["video"]]
            # Each video on its own frames: memory of one video, not k x the longest hit.
            frames = torch.from_numpy(np.asarray(self.index.frames(row))).float()[None]
            weights = queryscoring_frame_weights(embeds, frames, temperature)[0, 0]
            hit.update({"id": int(table["id"][row]),
                        "times": np.asarray(table["frame_times"][row], float).tolist(),
                        "weights": np.round(weights.double().numpy(), 5).tolist()})

    # Files ------------------------------------------------------------------------------------

    def row(self, video_id):
        if video_id not in self._row_of_id:
            raise RequestError(404, f"no video with id {video_id} in this index")
        return self._row_of_id[video_id]

    def open_video(self, video_id):
        """A binary file object of the indexed video `video_id`, if the file its recorded path
        leads to (through the links it had when indexed, or any others) is still the file
        indexed: a regular file whose size, mtime, inode and ctime are the recorded ones (the
        last two where the index records them). RequestError(404) otherwise, before any byte
        is read: a video replaced by a link to another file, or edited, is not served."""
        row = self.row(video_id)
        try:  # O_NONBLOCK: a FIFO put in the video's place must not hang the open
            fd = os.open(self._file_path(row), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) |
                         getattr(os, "O_NONBLOCK", 0))
        except OSError:
            raise RequestError(404, f"video {video_id} cannot be opened; run "
                                    "search_videos.py index again") from None
        info = os.fstat(fd)
        now = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino,
               "ctime_ns": info.st_ctime_ns}
        recorded = self._recorded_state(row)
        if not stat.S_ISREG(info.st_mode) or any(
                value != now[key] for key, value in recorded.items() if value != -1):
            os.close(fd)
            raise RequestError(404, f"video {video_id} changed since it was indexed (or its "
                                    "path now leads to another file); run search_videos.py "
                                    "index again")
        return os.fdopen(fd, "rb")

    def _recorded_state(self, row):
        """{"size", "mtime_ns", "inode", "ctime_ns"}: the stat the index recorded of the video
        (the keys it records; -1 where it did not)."""
        return {key: int(self.index.table[key][row]) for key in STAT_KEYS
                if key in self.index.table}

    def _file_path(self, row):
        """The video's path as the file system has it (its exact bytes where the name is not
        UTF-8 and the index records them)."""
        exact = self.index.table.get("path_bytes")
        if exact is not None and exact[row] is not None:
            return bytes(exact[row])
        return self.index.table["path"][row]

    def video_name(self, video_id):
        return self.index.table["path"][self.row(video_id)]

    def thumbnail(self, video_id, time_s):
        """JPEG bytes of the frame nearest time_s, at most 480 x 270, cached in memory under the
        video's recorded identity (sha256 and stat). Served, from the cache too, only while the
        file is still the one indexed (open_video's check); RequestError(404) otherwise."""
        from PIL import Image

        from clip_hitchhiker.search.video_index import read_frame_near

        row = self.row(video_id)
        key = (video_id, self.index.table["sha256"][row],
               tuple(self._recorded_state(row).items()), round(time_s, 3))
        with self.open_video(video_id) as file:
            cached = self._thumbnails.get(key)
            if cached is not None:
                return cached
            image = Image.fromarray(read_frame_near(file, time_s))
        image.thumbnail((480, 270))
        out = BytesIO()
        image.save(out, "JPEG", quality=85)
        return self._thumbnails.put(key, out.getvalue())

    def playable(self, video_id):
        """True if browsers play the video as it is (remembered); RequestError(404) if it is
        no longer the file indexed, checked on every call, so that the page hears of it."""
        from clip_hitchhiker.search.moment_clips import browser_playable

        self.open_video(video_id).close()
        if video_id not in self._playable:
            self._playable[video_id] = browser_playable(self.video_name(video_id))
        return self._playable[video_id]

    def clip(self, video_id, start, end, for_browser):
        """(file, meta): the moment's clip, open for reading, with {"start", "end", "method"};
        made if the cache lacks it, and kept in the cache until the file is closed. The moment
        must start within the video (its end is cut at the video's). Named by the video's
        sha256, so that a changed video never meets an old clip; written beside and moved into
        place, so that a half-written clip is never served; made one at a time, so that two
        requests for one clip make it once and clips never take every core."""
        from clip_hitchhiker.search.moment_clips import write_clip

        row = self.row(video_id)
        duration = float(self.index.table["duration"][row])
        if start >= duration:
            raise RequestError(400, f"start={start:g} is past the end of video {video_id} "
                                    f"({duration:.3f} s)")
        end = min(end, duration)
        key = clip_key(self.index.table["sha256"][row], video_id, start, end, for_browser)
        with self.open_video(video_id) as file:
            cached = self.clips.open(key)
            if cached is not None:
                return cached
            with self._clip_lock:
                cached = self.clips.open(key)  # made while this one waited
                if cached is not None:
                    return cached
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                with temporary_file(self.cache_dir, ".mp4.part") as made:
                    meta = write_clip(file, start, end, made, for_browser=for_browser,
                                      video_name=self.video_name(video_id),
                                      clip_path=self.clips.paths(key)[0])
                    return self.clips.add(key, made, meta)


def _image(data):
    """The PIL image of an upload's bytes; RequestError if it is not one or is too large."""
    from PIL import Image, UnidentifiedImageError

    from clip_hitchhiker.search.query_embeddings import IMAGE_FORMATS, MAX_IMAGE_PIXELS

    try:
        image = Image.open(BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise RequestError(413, f"the image has {image.width} x {image.height} pixels, "
                                    f"more than {MAX_IMAGE_PIXELS}")
        image.load()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise RequestError(400, "the upload is not an image the page reads (JPEG, PNG, WebP, "
                                f"GIF, BMP or TIFF): {e}") from e
    return image


def _faiss_threads():
    import faiss

    return faiss.omp_get_max_threads()


def _set_threads(torch_threads, faiss_threads):
    import faiss

    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


class _LRU:
    def __init__(self, size):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value):
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


def default_cache_dir():
    """$XDG_CACHE_HOME/clip-hitchhiker/clips (~/.cache/clip-hitchhiker/clips)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clip-hitchhiker" / "clips"


# ----------------------------------------------------------------------------------------------
# The app


def create_app(service, token=None, allowed_hosts=None):
    """The Starlette app over a SearchService. token: every request must carry it (?token= or
    Authorization: Bearer); allowed_hosts: the Host names accepted (None: any)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import Response
    from starlette.routing import Route

    pages = {route: (_static_bytes(name), kind) for route, (name, kind) in STATIC_FILES.items()}

    def static(request):
        body, kind = pages[request.url.path]
        return Response(body, media_type=kind, headers={"Cache-Control": "no-cache",
                                                        **PAGE_HEADERS})

    # The searches are handed from the event loop straight to the scorer thread.
    async def search_get(request):
        job = service.text_job(request.query_params.get("q", ""),
                               search_options(request.query_params))
        return json_response(await asyncio.wrap_future(service.submit(job)))

    async def search_post(request):
        options = search_options(request.query_params)
        data = await _read_body(request, MAX_IMAGE_BYTES)
        return json_response(await asyncio.wrap_future(service.submit(
            service.image_job(data, options))))

    async def similar(request):
        start, end = _moment(request)
        job = service.similar_job(_video_id(request), start, end,
                                  search_options(request.query_params))
        return json_response(await asyncio.wrap_future(service.submit(job)))

    def video(request):
        video_id = _video_id(request)
        file = service.open_video(video_id)
        return _file_response(request, file, served_type(service.video_name(video_id)))

    def play(request):
        video_id = _video_id(request)
        start, end = _moment(request)
        if service.playable(video_id):
            return json_response({"url": f"/api/video/{video_id}", "offset": 0.0,
                                 "method": "original"})
        file, meta = service.clip(video_id, start, end, for_browser=True)
        file.close()
        return json_response({"url": f"/api/clip/{video_id}?start={start}&end={end}&browser=1",
                             "offset": meta["start"], "method": meta["method"]})

    def clip(request):
        video_id = _video_id(request)
        start, end = _moment(request)
        file, meta = service.clip(video_id, start, end,
                                  for_browser=request.query_params.get("browser") == "1")
        return _file_response(request, file, "video/mp4",
                              {"Content-Disposition": attachment(clip_name(
                                  service.video_name(video_id), start, end)),
                               "X-Clip-Start": f"{meta['start']:.6f}"})

    def thumbnail(request):
        video_id = _video_id(request)
        duration = float(service.index.table["duration"][service.row(video_id)])
        time_s = number(request.query_params, "t", 0.0, 0.0, max(duration, 0.0))
        return Response(service.thumbnail(video_id, time_s), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    def info(request):
        summary = service.index.info(with_times=False)
        summary.pop("videos")
        return json_response({**summary, "token_required": token is not None,
                             "limits": {"query_chars": MAX_QUERY_CHARS,
                                        "image_bytes": MAX_IMAGE_BYTES, "k": MAX_K}})

    def refused(request, exc):
        status = getattr(exc, "status", None) or getattr(exc, "status_code", 500)
        message = str(exc) if isinstance(exc, RequestError) else (exc.detail or "refused")
        return json_response({"error": message}, status_code=status)

    # Errors meant for the user (a bad query, a video that cannot be cut) are answered here;
    # only a handler for Exception itself runs in Starlette's outermost middleware, which
    # re-raises so that uvicorn logs the traceback: kept for the server's own failures.
    def known(request, exc):
        status = 400 if isinstance(exc, (ConfigError, ValueError)) else 500
        return json_response({"error": str(exc)}, status_code=status)

    def failed(request, exc):
        return json_response({"error": f"the server failed ({type(exc).__name__}); its log "
                                       "has the details"}, status_code=500)

    routes = [Route(path, static) for path in STATIC_FILES] + [
        Route("/api/search", search_get, methods=["GET"]),
        Route("/api/search", search_post, methods=["POST"]),
        Route("/api/similar/{id}", similar),
        Route("/api/video/{id}", video),
        Route("/api/play/{id}", play),
        Route("/api/clip/{id}", clip),
        Route("/api/thumbnail/{id}", thumbnail),
        Route("/api/info", info),
    ]
    middleware = [Middleware(_SameOriginOnly), Middleware(_TokenCheck, token=token)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={RequestError: refused, HTTPException: refused,
                                         HitchhikerError: known, ValueError: known,
                                         Exception: failed})


def json_response(content, status_code=200, headers=None):
    """content as JSON text in ASCII, as `search --json` prints it: a video name that is not
    UTF-8 keeps its undecodable bytes as \\udcXX escapes (Starlette's JSONResponse writes UTF-8,
    which cannot hold them, and failed the whole answer)."""
    from starlette.responses import Response

    return Response(json.dumps(content, allow_nan=False), status_code, headers,
                    media_type="application/json")


def _video_id(request):
    """The {id} of the request's path as an int: decimal digits only, at most 18 of them (an
    index's ids are row numbers); RequestError(404) otherwise, before anything is opened."""
    text = request.path_params["id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise RequestError(404, f"no video with id {text[:40]!r} in this index")
    return int(text)


def _moment(request):
    params = request.query_params
    start = number(params, "start", None, 0.0, 1e7)
    end = number(params, "end", None, 0.0, 1e7)
    if start is None or end is None or not end > start:
        raise RequestError(400, "give start and end (seconds, start < end)")
    return start, end


def served_type(name):
    """The Content-Type a video file is served with: its media type where the name says video
    or audio, else application/octet-stream. A list may index any name, and a file that decodes
    as video but is named .html or .svg must not run as a page of this origin."""
    kind = mimetypes.guess_type(name)[0]
    return kind if kind and kind.split("/")[0] in ("video", "audio") else \
        "application/octet-stream"


def _static_bytes(name):
    return (importlib.resources.files("clip_hitchhiker.search") / "static" / name).read_bytes()


def attachment(name):
    """A Content-Disposition that saves the file as `name` (RFC 6266: filename*, UTF-8, where
    browsers read it; an ASCII filename for the others; a byte that is not UTF-8 as U+FFFD)."""
    from urllib.parse import quote

    plain = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    encoded = quote(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), safe="")
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{encoded}"


async def _read_body(request, limit):
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(413, f"the upload has {declared} bytes; at most {limit} are read")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise RequestError(413, f"the upload passes {limit} bytes")
    if not data:
        raise RequestError(400, "the request has no body: send the image's bytes")
    return bytes(data)


def _file_response(request, file, kind, headers=None):
    """200 with the whole file, or 206 with the bytes of its Range; the file is closed after."""
    from starlette.responses import Response, StreamingResponse

    size = os.fstat(file.fileno()).st_size
    try:
        span = parse_range(request.headers.get("range"), size)
    except RequestError as e:
        file.close()
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"},
                        content=json.dumps({"error": str(e)}), media_type="application/json")
    first, last = span if span is not None else (0, size - 1)
    headers = {**(headers or {}), "Accept-Ranges": "bytes", "Content-Length": str(last - first + 1),
               "X-Content-Type-Options": "nosniff"}
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    if request.method == "HEAD":
        file.close()
        return Response(status_code=206 if span else 200, headers=headers, media_type=kind)
    return StreamingResponse(_chunks(file, first, last), status_code=206 if span else 200,
                             headers=headers, media_type=kind)


def _chunks(file, first, last):
    with file:
        position = first
        while position <= last:
            chunk = os.pread(file.fileno(), min(_CHUNK, last - position + 1), position)
            if not chunk:
                return
            position += len(chunk)
            yield chunk


async def _send_error(send, status, message):
    """An ASGI response {"error": message} with this status, from a middleware."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def cross_site_reason(method, path, headers):
    """Why a request comes from another web page than the server's own (None if it does not):
    the user's browser, on any site it visits, would otherwise let that site drive this server
    (searches, clips to cut) and load its thumbnails and videos into its own page, reading
    their count, durations and sizes. Browsers say where a request comes from in Sec-Fetch-Site
    (and Origin for fetches and forms); a request without either (curl, a script) is let
    through. A top-level navigation to the page itself (a link to it, not a frame) is let
    through too.
    headers: {lower-case name: value}."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        navigation = (headers.get("sec-fetch-mode") == "navigate" and
                      headers.get("sec-fetch-dest", "document") == "document" and
                      method in ("GET", "HEAD") and path == "/")
        if not navigation:
            return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")  # scheme aside: a proxy in front may add TLS
    if origin is not None and origin.split("://", 1)[-1] != headers.get("host"):
        return f"Origin: {origin}"
    return None


class _SameOriginOnly:
    """Refuses (403, JSON) a request that another web page made (see cross_site_reason)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                       for name, value in scope.get("headers", [])}
            reason = cross_site_reason(scope["method"], scope["path"], headers)
            if reason is not None:
                await _send_error(send, 403, f"refused: another web page made this request "
                                             f"({reason}); open the search page itself")
                return
        await self.app(scope, receive, send)


class _TokenCheck:
    """Refuses (401, JSON) every request that does not carry the token, when one is set: as
    ?token=, as Authorization: Bearer, or as the cookie that a request with ?token= gets, so
    that the page's own requests (its script, videos, thumbnails) carry it too."""

    def __init__(self, app, token):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if self.token is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = f"hitchhiker_token_{(scope.get('server') or ('', 0))[1]}"
        given = _request_tokens(scope, cookie)
        if not any(hmac.compare_digest(t.encode(), self.token.encode()) for t in given.values()):
            await _send_error(send, 401, "this server needs its token: open the URL it printed "
                                         "(...?token=...)")
            return
        if "query" not in given:
            await self.app(scope, receive, send)
            return
        set_cookie = (f"{cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict").encode()

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"set-cookie", set_cookie)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _request_tokens(scope, cookie_name):
    """{"query" | "bearer" | "cookie": token} that a request carries."""
    from http.cookies import CookieError, SimpleCookie
    from urllib.parse import parse_qs

    found = {}
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    if query:
        found["query"] = query[0]
    for name, value in scope.get("headers", []):
        value = value.decode("latin-1")
        if name == b"authorization" and value.startswith("Bearer "):
            found["bearer"] = value[len("Bearer "):]
        elif name == b"cookie":
            cookies = SimpleCookie()
            try:
                cookies.load(value)
            except CookieError:  # a malformed Cookie header carries no token
                continue
            if cookie_name in cookies:
                found["cookie"] = cookies[cookie_name].value
    return found


def check_port_free(host, port):
    """ConfigError naming --port if host:port cannot be bound (another server holds it)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as e:
        raise ConfigError(f"--host {host} --port {port} cannot be listened on ({e}); pass "
                          "another --port, or stop what holds it") from e


def run_server(app, host, port):
    """Serve app until interrupted (uvicorn; no access log: URLs may carry the token)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False,
                                  log_level="warning")).run()


def is_loopback(host):
    """True if `--host` host listens on this machine only: localhost or a loopback address
    (127.0.0.0/8, ::1); not a name that merely starts with "127."."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host):
    """host as a URL and a Host header write it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def loopback_host_names(host):
    """The Host header names a server listening on the loopback address `host` accepts: its
    own address and this machine's usual names; a name another site resolves to 127.0.0.1 (DNS
    rebinding) is refused."""
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, url_host(host))))
