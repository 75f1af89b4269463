"""search_videos.py serve: the JSON API against `search --json`, HTTP ranges byte for byte,
every traversal attempt refused, the token, bounded sizes, JSON errors, concurrent requests and
the model loaded once. A real server on 127.0.0.1 where the raw request matters."""
import contextlib
import http.client
import itertools
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import search_videos  # noqa: E402
from clip_hitchhiker.search import server  # noqa: E402
from clip_hitchhiker.search.query_embeddings import moment_embedding  # noqa: E402
from clip_hitchhiker.search.video_index import VideoIndex  # noqa: E402
from query_scoring import queryscoring_frame_weights  # noqa: E402
from tests import search_synthetic  # noqa: E402

EXTRA_FIELDS = ("id", "times", "weights")


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    return search_synthetic.build_colour_index(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def service(colour, tmp_path_factory):
    service = server.SearchService(VideoIndex.open(colour["index"]),
                                   tmp_path_factory.mktemp("clip_cache"))
    service.warm_up()
    return service


@pytest.fixture(scope="module")
def client(service):
    from starlette.testclient import TestClient

    return TestClient(server.create_app(service))


class LiveServer:
    """uvicorn serving app on 127.0.0.1 (a free port) in a thread, for raw HTTP requests."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="error", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def get(self, raw_path, headers=None):
        """(status, headers, body) of GET raw_path, sent exactly as written (no normalising)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.putrequest("GET", raw_path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


def cli_json(capsys, *argv):
    """What `search_videos.py search ... --json` prints, parsed."""
    capsys.readouterr()
    search_videos.main(search_videos.parse_args([str(a) for a in argv] + ["--json"]))
    return json.loads(capsys.readouterr().out)


def without_extras(report):
    """The report with the API's extra hit fields removed (they are checked on their own)."""
    report = json.loads(json.dumps(report))
    for result in report["queries"]:
        for hit in result["hits"]:
            for name in EXTRA_FIELDS:
                del hit[name]
    return report


# ----------------------------------------------------------------------------------------------
# Results equal the CLI's


@pytest.mark.parametrize("options", [
    {"k": 3}, {"k": 10, "aggregate": "mean"}, {"k": 2, "temperature": 0.05, "exact": "1"},
    {"k": 4, "mass": 0.8, "candidates": 3}])
def test_api_search_equals_search_json(colour, client, capsys, options):
    cli_options = [f"--{name}" if name != "k" else "-k" for name in options]
    argv = ["search", "--index", colour["index"], "a teal video"]
    for flag, (name, value) in zip(cli_options, options.items()):
        argv += [flag] if name == "exact" else [flag, value]
    expected = cli_json(capsys, *argv)
    answer = client.get("/api/search", params={"q": "a teal video", **options})
    assert answer.status_code == 200
    assert without_extras(answer.json()) == expected
    assert len(expected["queries"][0]["hits"]) == min(options["k"], 10)


def test_api_hits_carry_id_times_and_query_scoring_weights(colour, client):
    index = VideoIndex.open(colour["index"])
    hits = client.get("/api/search", params={"q": "a purple video", "k": 10}).json()[
        "queries"][0]["hits"]
    text = index.encode_texts(["a purple video"])
    for hit in hits:
        row = list(index.table["path"]).index(hit["video"])
        assert hit["id"] == int(index.table["id"][row])
        assert hit["times"] == [round(float(t), 3) for t in index.table["frame_times"][row]]
        assert hit["score"] == round(hit["score"], 6)  # rounded as search --json rounds
        frames = torch.from_numpy(np.array(index.frames(row), dtype=np.float32))[None]
        weights = queryscoring_frame_weights(text, frames, 0.1)[0, 0]
        torch.testing.assert_close(torch.tensor(hit["weights"]), weights, atol=6e-6, rtol=0)
        assert int(np.argmax(hit["weights"])) == hit["peak_frame"]
    assert hits[0]["video"] == colour["truth"]["purple"][0]


def test_api_image_search_equals_search_images(colour, client, tmp_path):
    image = search_synthetic.colour_image(tmp_path / "green.png", "green")
    answer = client.post("/api/search?k=3", content=image.read_bytes(),
                         headers={"Content-Type": "image/png"})
    assert answer.status_code == 200
    expected = VideoIndex.open(colour["index"]).search_images([image], k=3)[0]["hits"]
    assert without_extras(answer.json())["queries"][0] == {
        "image": None, "hits": search_videos.rounded_for_print(expected)}
    assert expected[0]["video"] == colour["truth"]["green"][0]


def test_more_like_this_is_the_moments_mean_unit_frame(colour, client):
    index = VideoIndex.open(colour["index"])
    row = list(index.table["path"]).index(colour["truth"]["yellow"][0])
    video_id = int(index.table["id"][row])
    frames = np.array(index.frames(row), dtype=np.float64)
    times = index.table["frame_times"][row]
    chosen = [f / np.linalg.norm(f) for f, t in zip(frames, times) if 8.0 <= t <= 11.0]
    assert len(chosen) == 3  # frames at 8.5, 9.5 and 10.5 s
    torch.testing.assert_close(moment_embedding(index, video_id, 8.0, 11.0),
                               torch.tensor(np.mean(chosen, 0), dtype=torch.float32))
    answer = client.get(f"/api/similar/{video_id}", params={"start": 8, "end": 11, "k": 3})
    expected = index.search_embeddings(moment_embedding(index, video_id, 8.0, 11.0)[None], k=3)
    result = without_extras(answer.json())["queries"][0]
    assert result["hits"] == search_videos.rounded_for_print(expected[0])
    assert result["like"] == {"id": video_id, "video": colour["truth"]["yellow"][0],
                              "start": 8.0, "end": 11.0}
    assert result["hits"][0]["video"] == colour["truth"]["yellow"][0]


def test_a_video_name_that_is_not_utf8_is_answered_as_search_json_prints_it(colour, tmp_path,
                                                                           capsys):
    from starlette.testclient import TestClient

    videos = tmp_path / "videos"
    videos.mkdir()
    raw = os.fsencode(videos) + b"/caf\xe9 red.mp4"
    try:
        shutil.copy2(colour["truth"]["red"][0], raw)
    except OSError as e:
        pytest.skip(f"this file system takes no non-UTF-8 name ({e})")
    shutil.copy2(colour["truth"]["blue"][0], videos / "blue.mp4")
    search_videos.main(search_videos.parse_args(
        ["index", str(videos), "--index", str(tmp_path / "index"), "--model",
         str(colour["model"]), "--device", "cpu", "--num_workers", "0", "--decoder", "pyav"]))
    client = TestClient(server.create_app(server.SearchService(
        VideoIndex.open(tmp_path / "index"), tmp_path / "cache")))
    answer = client.get("/api/search", params={"q": "a red video", "k": 2})
    assert answer.status_code == 200, answer.text
    expected = cli_json(capsys, "search", "--index", tmp_path / "index", "a red video", "-k", 2)
    assert without_extras(answer.json()) == expected
    hit = answer.json()["queries"][0]["hits"][0]
    assert hit["video"] == os.fsdecode(raw)
    like = client.get(f"/api/similar/{hit['id']}", params={"start": 0, "end": 3})
    assert like.status_code == 200 and like.json()["queries"][0]["like"]["video"] == hit["video"]
    video = client.get(f"/api/video/{hit['id']}")
    assert video.status_code == 200 and video.content == Path(os.fsdecode(raw)).read_bytes()
    clip = client.get(f"/api/clip/{hit['id']}", params={"start": 0, "end": 3})
    assert clip.headers["content-disposition"] == (  # the name's bytes, one not UTF-8 as U+FFFD
        "attachment; filename=\"caf__red_0.000-3.000.mp4\"; "
        "filename*=UTF-8''caf%EF%BF%BD%20red_0.000-3.000.mp4")


def test_info_page_and_static_files(client):
    info = client.get("/api/info").json()
    assert info["num_videos"] == 10 and info["num_frames"] == 109 and "videos" not in info
    page = client.get("/")
    assert page.status_code == 200 and 'src="static/app.js"' in page.text
    assert client.get("/static/app.js").text.startswith("// The search page")
    assert "--accent" in client.get("/static/style.css").text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from the network


# ----------------------------------------------------------------------------------------------
# HTTP ranges


def range_oracle(header_first, header_last, size):
    """The bytes RFC 9110 says `bytes=first-last` selects: None to send all, "416", or the
    sorted offsets."""
    if header_first == "" and header_last == "":
        return None
    if header_first == "":
        selected = list(range(max(0, size - int(header_last)), size))
    elif header_last != "" and int(header_last) < int(header_first):
        return None
    else:
        last = size - 1 if header_last == "" else int(header_last)
        selected = [i for i in range(size) if int(header_first) <= i <= last]
    return selected or "416"


def test_parse_range_against_every_small_case():
    values = [""] + [str(v) for v in range(9)]
    for size in range(7):
        for first in values:
            for last in values:
                header = f"bytes={first}-{last}"
                expected = range_oracle(first, last, size)
                if expected == "416":
                    with pytest.raises(server.RequestError) as refused:
                        server.parse_range(header, size)
                    assert refused.value.status == 416
                    continue
                got = server.parse_range(header, size)
                assert (got if got is None else list(range(got[0], got[1] + 1))) == expected, \
                    (header, size)
    for ignored in [None, "", "bytes=0-1,3-4", "items=0-3", "bytes=a-b", "bytes=1-2-3",
                    "bytes=-", "bytes=\u00b2-3"]:
        assert server.parse_range(ignored, 10) is None


@pytest.mark.parametrize("header, first, last", [
    ("bytes=0-0", 0, 0), ("bytes=100-1099", 100, 1099), ("bytes=5000-", 5000, None),
    ("bytes=-777", -777, None), ("bytes=0-99999999", 0, None)])
def test_range_requests_return_exactly_the_bytes(colour, client, header, first, last):
    data = Path(colour["truth"]["red"][0]).read_bytes()
    first = first % len(data)
    last = len(data) - 1 if last is None else last
    answer = client.get("/api/video/7", headers={"Range": header})
    assert answer.status_code == 206
    assert answer.content == data[first:last + 1]
    assert answer.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    assert answer.headers["content-length"] == str(last - first + 1)
    assert answer.headers["content-type"] == "video/mp4"


def test_whole_video_and_unsatisfiable_range(colour, client):
    data = Path(colour["truth"]["red"][0]).read_bytes()
    whole = client.get("/api/video/7")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    refused = client.get("/api/video/7", headers={"Range": f"bytes={len(data)}-"})
    assert refused.status_code == 416
    assert refused.headers["content-range"] == f"bytes */{len(data)}"


# ----------------------------------------------------------------------------------------------
# Security


@pytest.fixture
def own_index(tmp_path):
    """A private colour index (red and blue only) whose videos a test may replace."""
    root = tmp_path / "own"
    model = search_synthetic.save_colour_clip(tmp_path / "colour.pt")
    truth = search_synthetic.build_segment_videos(root / "videos",
                                                  colours=("red", "blue", "green"))
    search_videos.main(search_videos.parse_args(
        ["index", str(root / "videos"), "--index", str(root / "index"), "--model", str(model),
         "--device", "cpu", "--num_workers", "0"]))
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET-" * 1000)
    return {"root": root, "truth": truth, "index": root / "index", "secret": secret}


TRAVERSALS = [
    "/api/video/..%2F..%2F..%2Fetc%2Fpasswd", "/api/video/%2Fetc%2Fpasswd",
    "/api/video/../../../etc/passwd", "/api/video/%2e%2e/%2e%2e/etc/passwd",
    "/api/video/0%2F..%2F..%2Fsecret.txt", "/api/video/0/../../secret.txt",
    "/static/../server.py", "/static/..%2fserver.py", "/static/%2e%2e%2fserver.py",
    "/static/app.js/../../server.py", "//etc/passwd", "/api/video//etc/passwd",
    "/api/video/{secret}", "/api/video/file:{secret}", "/api/thumbnail/..%2f..%2fsecret.txt",
    "/api/video/99", "/api/video/3", "/api/video/-1", "/api/video/1e3", "/api/video/0x1",
    "/api/video/%30%78%31", "/api/thumbnail/99?t=1", "/api/clip/3?start=0&end=1",
    "/api/play/-5?start=0&end=1", "/api/similar/99?start=0&end=1",
    "/api/video/18446744073709551617", "/api/video/" + "1" * 5000, "/api/clip/" + "9" * 19,
    "/api/video/%C2%B2", "/api/video/%EF%BC%91"]  # 5000 digits, superscript 2, fullwidth 1


def test_every_traversal_attempt_is_refused(own_index):
    service = server.SearchService(VideoIndex.open(own_index["index"]),
                                   own_index["root"] / "cache")
    secret = own_index["secret"]
    with LiveServer(server.create_app(service)) as live:
        assert live.get("/api/video/0")[0] == 200  # the server serves what it should
        for attempt in TRAVERSALS:
            status, headers, body = live.get(attempt.format(secret=secret))
            assert status == 404, (attempt, status, body[:200])
            assert b"SECRET" not in body and b"root:" not in body
            assert json.loads(body)["error"]


def test_a_video_replaced_by_a_link_or_changed_is_not_served(own_index):
    service = server.SearchService(VideoIndex.open(own_index["index"]),
                                   own_index["root"] / "cache")
    truth = own_index["truth"]
    red, blue, green = (truth[c][0] for c in ("red", "blue", "green"))
    ids = {p: int(i) for p, i in zip(service.index.table["path"], service.index.table["id"])}
    os.unlink(red)
    os.symlink(own_index["secret"], red)  # a link out of the folder, where the video was
    blue_bytes = Path(blue).read_bytes()
    mtime = os.stat(blue).st_mtime_ns
    Path(blue).write_bytes(blue_bytes[:-1] + b"x")  # same size and mtime, another content
    os.utime(blue, ns=(mtime, mtime))
    os.mkfifo(own_index["root"] / "fifo")
    green_id = ids[green]
    with LiveServer(server.create_app(service)) as live:
        for video_id in (ids[red], ids[blue]):
            for path in (f"/api/video/{video_id}", f"/api/thumbnail/{video_id}?t=1",
                         f"/api/clip/{video_id}?start=0&end=2",
                         f"/api/play/{video_id}?start=0&end=2"):
                status, _, body = live.get(path, {"Range": "bytes=0-100"})
                assert status == 404 and b"SECRET" not in body, (path, status)
                assert "changed since it was indexed" in json.loads(body)["error"]
        # The folder moved and a link in its place: the same files, served.
        moved = own_index["root"] / "moved"
        shutil.move(own_index["root"] / "videos", moved)
        os.symlink(moved, own_index["root"] / "videos")
        status, _, body = live.get(f"/api/video/{green_id}")
        assert status == 200 and body == (moved / "green.mp4").read_bytes()
        # A link to a copy of the folder (other files, the same bytes): refused.
        os.unlink(own_index["root"] / "videos")
        shutil.copytree(moved, own_index["root"] / "copy", symlinks=True)
        os.symlink(own_index["root"] / "copy", own_index["root"] / "videos")
        assert live.get(f"/api/video/{green_id}")[0] == 404
        # A FIFO in the video's place does not hang the server.
        os.unlink(own_index["root"] / "copy" / "green.mp4")
        os.symlink(own_index["root"] / "fifo", own_index["root"] / "copy" / "green.mp4")
        assert live.get(f"/api/video/{green_id}")[0] == 404
    assert not (own_index["root"] / "cache").exists()  # nothing was read to make a clip


def test_a_cached_thumbnail_is_not_shown_once_its_video_changed(own_index):
    """The thumbnail cache is checked as the videos are: a video replaced after indexing (here
    with other bytes of the same size and mtime) gets a 404, not the old frame from memory."""
    from starlette.testclient import TestClient

    service = server.SearchService(VideoIndex.open(own_index["index"]),
                                   own_index["root"] / "cache")
    client = TestClient(server.create_app(service))
    blue = own_index["truth"]["blue"][0]
    blue_id = service.index.table["path"].index(str(blue))
    first = client.get(f"/api/thumbnail/{blue_id}?t=1")
    assert first.status_code == 200
    assert client.get(f"/api/thumbnail/{blue_id}?t=1").content == first.content  # cached
    data, mtime = Path(blue).read_bytes(), os.stat(blue).st_mtime_ns
    os.unlink(blue)
    Path(blue).write_bytes(data[:-1] + b"x")
    os.utime(blue, ns=(mtime, mtime))
    again = client.get(f"/api/thumbnail/{blue_id}?t=1")
    assert again.status_code == 404
    assert again.json() == {"error": f"video {blue_id} changed since it was indexed (or its path "
                                     "now leads to another file); run search_videos.py index "
                                     "again"}


def test_token_is_enforced_on_every_request(service):
    from starlette.testclient import TestClient

    client = TestClient(server.create_app(service, token="s3cret-token"))
    for path in ["/", "/static/app.js", "/api/info", "/api/search?q=a+red+video",
                 "/api/video/7", "/api/thumbnail/7?t=1"]:
        assert client.get(path).status_code == 401
        assert client.get(path, params={"token": "wrong-token"}).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer s3cret-token"}
                          ).status_code == 200
    page = client.get("/", params={"token": "s3cret-token"})
    assert page.status_code == 200
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("hitchhiker_token_") and "HttpOnly" in cookie
    # The page's own requests carry the cookie it set.
    assert client.get("/static/app.js").status_code == 200
    client.cookies.clear()
    assert client.get("/static/app.js").status_code == 401
    assert client.post("/api/search", content=b"x").status_code == 401


def test_requests_from_other_web_pages_are_refused(colour, tmp_path):
    """Every combination of what a browser says about a request's source: only the page's own
    requests, a typed address or a link to the page itself pass (and clients that say nothing);
    a web page elsewhere cannot search, cut clips or load thumbnails and videos."""
    from starlette.testclient import TestClient

    client = TestClient(server.create_app(server.SearchService(
        VideoIndex.open(colour["index"]), tmp_path / "cache")))  # its own clips
    image = search_synthetic.colour_image(tmp_path / "red.png", "red").read_bytes()
    requests = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/api/thumbnail/7?t=1"),
                ("GET", "/api/video/7"), ("GET", "/api/search?q=a+red+video&k=1"),
                ("POST", "/api/search?k=1"), ("GET", "/api/clip/7?start=0&end=1")]
    for site, mode, dest, (method, path) in itertools.product(
            [None, "same-origin", "none", "same-site", "cross-site"],
            [None, "navigate", "no-cors", "cors"], [None, "document", "iframe", "image"],
            requests):
        headers = {name: value for name, value in [
            ("Sec-Fetch-Site", site), ("Sec-Fetch-Mode", mode), ("Sec-Fetch-Dest", dest)]
            if value}
        answer = client.request(method, path, headers=headers,
                                content=image if method == "POST" else None)
        allowed = site in (None, "same-origin", "none") or (
            mode == "navigate" and dest in (None, "document") and path == "/")
        assert answer.status_code == (200 if allowed else 403), (site, mode, dest, path)
        if not allowed:
            assert answer.json()["error"] == (
                f"refused: another web page made this request (Sec-Fetch-Site: {site}); "
                "open the search page itself")
    for origin in ["http://testserver", "https://testserver", "http://evil.example", "null",
                   "http://testserver.evil.example", "http://testserver:80"]:
        answer = client.post("/api/search?k=1", content=image, headers={"Origin": origin})
        allowed = origin.split("://")[-1] == "testserver"
        assert answer.status_code == (200 if allowed else 403), origin


def test_a_file_is_served_as_a_video_or_as_bytes_never_as_a_page(colour, tmp_path, client):
    """A list may index a file that decodes as video whatever its name: named .html or .svg it
    is served as bytes (a page of this origin could read every answer); the page itself may not
    be framed by another site and loads only its own files."""
    from starlette.testclient import TestClient

    for name in ["page.html", "image.svg", "clip.mp4", "film.webm"]:
        shutil.copy2(colour["truth"]["red"][0], tmp_path / name)
    (tmp_path / "list.txt").write_text("page.html\nimage.svg\nclip.mp4\nfilm.webm\n")
    search_videos.main(search_videos.parse_args(
        ["index", str(tmp_path / "list.txt"), "--index", str(tmp_path / "index"), "--model",
         str(colour["model"]), "--device", "cpu", "--num_workers", "0"]))
    service = server.SearchService(VideoIndex.open(tmp_path / "index"), tmp_path / "cache")
    listed = TestClient(server.create_app(service))
    served = {}
    for video_id, path in zip(service.index.table["id"], service.index.table["path"]):
        answer = listed.get(f"/api/video/{video_id}", headers={"Range": "bytes=0-3"})
        assert answer.status_code == 206 and answer.headers["x-content-type-options"] == "nosniff"
        served[Path(path).name] = answer.headers["content-type"]
    assert served == {"page.html": "application/octet-stream",
                      "image.svg": "application/octet-stream", "clip.mp4": "video/mp4",
                      "film.webm": "video/webm"}
    page = client.get("/")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["content-security-policy"] == (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'")


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_off_loopback_warns_and_generates_a_token(colour, monkeypatch, capsys):
    from starlette.testclient import TestClient

    served, port = {}, free_port()
    monkeypatch.setattr(server, "run_server", lambda app, host, port: served.update(
        app=app, host=host, port=port))
    serve = ["serve", "--index", str(colour["index"]), "--port", str(port), "--cache",
             str(colour["root"] / "cache")]
    url = search_videos.main(search_videos.parse_args(serve + ["--host", "0.0.0.0"]))
    out, err = capsys.readouterr()
    assert "warning: --host 0.0.0.0" in err and url in out
    token = url.split("?token=")[1]
    assert len(token) >= 20 and served["host"] == "0.0.0.0" and served["port"] == port
    client = TestClient(served["app"])
    assert client.get("/api/info").status_code == 401
    assert client.get("/api/info", params={"token": token}).status_code == 200
    # Given a token, it uses it; on loopback no token is needed, and other Host names fail.
    url = search_videos.main(search_videos.parse_args(serve + ["--host", "0.0.0.0", "--token",
                                                               "mine-12345"]))
    assert url.endswith("?token=mine-12345")
    url = search_videos.main(search_videos.parse_args(serve))
    assert url == f"http://127.0.0.1:{port}/"
    local = TestClient(served["app"], base_url=f"http://127.0.0.1:{port}")
    assert local.get("/api/info").status_code == 200
    assert local.get("/api/info", headers={"Host": "evil.example"}).status_code == 400


def test_serve_takes_the_token_from_the_environment(colour, monkeypatch, capsys):
    """$CLIP_HITCHHIKER_TOKEN, which ps does not show, as --token: enforced, on 0.0.0.0 and on
    loopback, and carried by the printed URL; --token wins over it; too short is refused."""
    from starlette.testclient import TestClient

    served, port = {}, free_port()
    monkeypatch.setattr(server, "run_server", lambda app, host, port: served.update(app=app))
    monkeypatch.setenv("CLIP_HITCHHIKER_TOKEN", "from-the-environment")
    serve = ["serve", "--index", str(colour["index"]), "--port", str(port), "--cache",
             str(colour["root"] / "cache")]
    for host in ("0.0.0.0", "127.0.0.1"):
        url = search_videos.main(search_videos.parse_args(serve + ["--host", host]))
        assert url.endswith("/?token=from-the-environment") and url in capsys.readouterr().out
        client = TestClient(served["app"], base_url=f"http://127.0.0.1:{port}")
        assert client.get("/api/info").status_code == 401
        assert client.get("/api/info", params={"token": "from-the-environment"}).status_code \
            == 200
    url = search_videos.main(search_videos.parse_args(serve + ["--token", "given-12345"]))
    assert url.endswith("/?token=given-12345")
    monkeypatch.setenv("CLIP_HITCHHIKER_TOKEN", "short")
    with pytest.raises(SystemExit):
        search_videos.parse_args(serve)
    assert "$CLIP_HITCHHIKER_TOKEN must have at least 8 characters" in capsys.readouterr().err
    monkeypatch.setenv("CLIP_HITCHHIKER_TOKEN", "")  # set but empty: no token
    assert search_videos.main(search_videos.parse_args(serve)) == f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("host, url_host", [("::1", "[::1]"), ("127.0.0.2", "127.0.0.2"),
                                             ("localhost", "localhost")])
def test_serve_on_any_loopback_address_answers_its_own_url(colour, monkeypatch, capsys, host,
                                                           url_host):
    """The printed URL opens the page: its Host is accepted (an IPv6 address in brackets, as
    URLs write it), and names that merely resemble a loopback address are not loopback."""
    import socket

    from starlette.testclient import TestClient

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
    except OSError as e:
        pytest.skip(f"this machine cannot listen on {host} ({e})")
    served, port = {}, free_port()
    monkeypatch.setattr(server, "run_server", lambda app, host, port: served.update(app=app))
    url = search_videos.main(search_videos.parse_args(
        ["serve", "--index", str(colour["index"]), "--host", host, "--port", str(port),
         "--cache", str(colour["root"] / "cache")]))
    assert url == f"http://{url_host}:{port}/"
    assert "warning" not in capsys.readouterr().err  # loopback: no token needed
    client = TestClient(served["app"], base_url=url)
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info", headers={"Host": f"evil.example:{port}"}).status_code == 400
    assert [server.is_loopback(h) for h in ["127.0.0.1", "127.255.0.9", "::1", "localhost",
                                            "127.evil.example", "0.0.0.0", "::", "10.0.0.1"]] \
        == [True, True, True, True, False, False, False, False]


def test_serve_on_a_taken_port_is_one_line(colour, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            search_videos.cli(["serve", "--index", str(colour["index"]), "--port", str(port)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.startswith(f"error: --host 127.0.0.1 --port {port} cannot be listened on")
    assert len(err.strip().splitlines()) == 1


def test_bounded_sizes_and_json_errors(service, client, monkeypatch):
    long = client.get("/api/search", params={"q": "a" * (server.MAX_QUERY_CHARS + 1)})
    assert long.status_code == 413 and "characters" in long.json()["error"]
    for params, word in [({"q": "x", "k": "abc"}, "k must be a number"),
                         ({"q": "x", "k": server.MAX_K + 1}, "k must be in"),
                         ({"q": "x", "temperature": "nan"}, "temperature"),
                         ({"q": "x", "aggregate": "max"}, "aggregate"), ({"q": " "}, "empty"),
                         ({"q": "\u200b"}, "holds only invisible characters"),
                         ({"q": "\ufffc"}, "holds no token once tokenised")]:
        answer = client.get("/api/search", params=params)
        assert answer.status_code == 400 and word in answer.json()["error"], params
    not_image = client.post("/api/search", content=b"not an image")
    assert not_image.status_code == 400 and "not an image" in not_image.json()["error"]
    from tests.test_moment_clips import EPS, ghostscript_calls

    calls = ghostscript_calls(monkeypatch)
    eps = client.post("/api/search", content=EPS)  # Pillow's EPS reader runs Ghostscript
    assert eps.status_code == 400 and calls == []
    assert eps.json()["error"].startswith("the upload is not an image the page reads (JPEG, "
                                          "PNG, WebP, GIF, BMP or TIFF): ")
    monkeypatch.setattr(server, "MAX_IMAGE_BYTES", 1000)
    big = client.post("/api/search", content=b"x" * 1001)
    assert big.status_code == 413
    from starlette.testclient import TestClient

    monkeypatch.setattr(service.index, "search_embeddings", lambda *a, **k: 1 / 0)
    browser = TestClient(server.create_app(service), raise_server_exceptions=False)
    failed = browser.get("/api/search", params={"q": "a red video"})
    assert failed.status_code == 500
    assert failed.json() == {"error": "the server failed (ZeroDivisionError); its log has the "
                                      "details"}
    assert "Traceback" not in failed.text


def test_a_query_refused_by_the_index_is_a_400_not_a_server_failure(client):
    """A QueryError (here: a text the colour CLIP embeds to zero) is the user's error: answered
    as JSON by the app, not re-raised to uvicorn, which would log a traceback for each."""
    answer = client.get("/api/search", params={"q": "a video"})  # raises if re-raised
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("text_embeds row(s) [0] hold NaN or inf or are all "
                                             "zero")


# ----------------------------------------------------------------------------------------------
# Concurrency and loading


def test_concurrent_requests_each_get_their_own_answer(service, monkeypatch):
    names = list(search_synthetic.SEARCH_COLOURS)
    expected = {n: service.search_text(f"a {n} video", server.search_options({"k": "3"}))
                for n in names}
    count = {"scorer": 0, "scorer_max": 0, "queued": 0, "queued_max": 0}
    lock = threading.Lock()

    def step(key, by):
        with lock:
            count[key] += by
            count[f"{key}_max"] = max(count[f"{key}_max"], count[key])

    search_embeddings, submit = service.index.search_embeddings, service.submit

    def scorer(*args, **kwargs):
        step("scorer", 1)
        try:
            time.sleep(0.02)  # long enough for the other requests to arrive meanwhile
            return search_embeddings(*args, **kwargs)
        finally:
            step("scorer", -1)

    def queued(job):
        step("queued", 1)
        future = submit(job)
        future.add_done_callback(lambda _: step("queued", -1))
        return future

    monkeypatch.setattr(service.index, "search_embeddings", scorer)
    monkeypatch.setattr(service, "submit", queued)
    answers, barrier = {}, threading.Barrier(len(names))
    with LiveServer(server.create_app(service)) as live:
        def ask(name):
            barrier.wait()
            status, _, body = live.get(f"/api/search?q=a+{name}+video&k=3")
            answers[name] = (status, json.loads(body))

        threads = [threading.Thread(target=ask, args=(n,)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert {n: a[0] for n, a in answers.items()} == {n: 200 for n in names}
    assert {n: a[1] for n, a in answers.items()} == json.loads(json.dumps(expected))
    assert count["queued_max"] > 1  # the requests were in the server together
    assert count["scorer_max"] == 1  # but never inside the scorer together


def test_model_is_loaded_once(colour, tmp_path, monkeypatch):
    from clip_hitchhiker.models import backends

    loads = []
    load_model = backends.load_model
    monkeypatch.setattr(backends, "load_model", lambda *a, **k: loads.append(a) or
                        load_model(*a, **k))
    service = server.SearchService(VideoIndex.open(colour["index"]), tmp_path)
    service.warm_up()
    assert len(loads) == 1
    image = search_synthetic.colour_image(tmp_path / "blue.png", "blue").read_bytes()
    options = server.search_options({})
    for _ in range(3):
        service.search_text("a blue video", options)
        service.search_image(image, options)
    assert len(loads) == 1


# ----------------------------------------------------------------------------------------------
# Thumbnails, playback and clips


def test_thumbnail_is_the_frame_at_t(colour, client):
    from io import BytesIO

    from PIL import Image

    start, end = colour["truth"]["blue"][1]
    answer = client.get("/api/thumbnail/1", params={"t": (start + end) / 2})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    pixels = np.asarray(Image.open(BytesIO(answer.content)).convert("RGB"), dtype=float)
    assert np.abs(pixels.mean((0, 1)) - search_synthetic.SEARCH_COLOURS["blue"]).max() < 12
    assert client.get("/api/thumbnail/1", params={"t": 1000}).status_code == 400


def test_play_gives_a_clip_for_4_4_4_video_and_the_index_stays_unwritten(colour, service,
                                                                         client):
    def snapshot(folder):
        return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}

    before = snapshot(colour["index"])
    start, end = colour["truth"]["red"][1]
    where = client.get("/api/play/7", params={"start": start, "end": start + 3}).json()
    assert where["method"] == "encode" and where["offset"] == start  # a frame at 4.0 s
    assert where["url"] == f"/api/clip/7?start={start}&end={start + 3}&browser=1"
    clip = client.get(where["url"])
    assert clip.status_code == 200 and clip.headers["x-clip-start"] == f"{start:.6f}"
    name = f"red_{start:.3f}-{start + 3:.3f}.mp4"  # as search --clips names it
    assert clip.headers["content-disposition"] == \
        f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"
    cached = sorted(p.name for p in service.cache_dir.iterdir())
    assert len(cached) == 2 and cached[0].endswith("_browser.json")
    assert clip.content == (service.cache_dir / cached[1]).read_bytes()
    again = client.get(where["url"], headers={"Range": "bytes=10-20"})
    assert again.status_code == 206 and again.content == clip.content[10:21]
    assert snapshot(colour["index"]) == before


def test_two_requests_for_one_clip_make_it_once(colour, tmp_path, monkeypatch):
    from clip_hitchhiker.search import moment_clips

    service = server.SearchService(VideoIndex.open(colour["index"]), tmp_path / "cache")
    made, write_clip = [], moment_clips.write_clip

    def slow_write_clip(*args, **kwargs):
        made.append(args[1:3])
        time.sleep(0.3)  # the other requests arrive while it is being made
        return write_clip(*args, **kwargs)

    monkeypatch.setattr(moment_clips, "write_clip", slow_write_clip)
    answers, barrier = [], threading.Barrier(4)

    def ask():
        barrier.wait()
        file, meta = service.clip(7, 1.0, 3.0, for_browser=False)
        with file:
            answers.append((file.read(), meta))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert made == [(1.0, 3.0)]
    assert len(answers) == 4 and all(answer == answers[0] for answer in answers)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".mp4"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_clip_that_cannot_be_written_is_one_line_naming_the_video_and_the_clip(
        colour, tmp_path, monkeypatch):
    """The disk full (the clip written to /dev/full): the page hears which video and which clip,
    not "cannot cut a clip of 12" (the descriptor number of the video opened for it)."""
    from starlette.testclient import TestClient

    temporary = server.temporary_file

    @contextlib.contextmanager
    def full_disk(folder, suffix):
        if suffix != ".mp4.part":
            with temporary(folder, suffix) as path:
                yield path
        else:
            yield "/dev/full"

    monkeypatch.setattr(server, "temporary_file", full_disk)
    service = server.SearchService(VideoIndex.open(colour["index"]), tmp_path / "cache")
    answer = TestClient(server.create_app(service)).get("/api/clip/7?start=1&end=3")
    sha = service.index.table["sha256"][service.row(7)]
    assert answer.status_code == 500
    assert answer.json() == {"error": f"cannot cut a clip of {service.video_name(7)} into "
                                      f"{tmp_path / 'cache' / sha[:32]}_1000_3000_mp4.mp4 (No "
                                      "space left on device)"}
    assert list((tmp_path / "cache").iterdir()) == []


META = {"start": 0.0, "end": 1.0, "method": "copy"}
ENTRY = 1000 + len(json.dumps(META))  # a test clip's bytes with its record's


def add_clip(cache, key):
    """cache.add of a 1000-byte clip KEY: the clip, open (being served)."""
    made = cache.folder / f".{key}.mp4.part"
    made.write_bytes(b"x" * 1000)
    file, meta = cache.add(key, made, META)
    assert meta == META
    return file


def test_the_clip_cache_removes_the_least_recently_used_clips_it_made(tmp_path):
    """At most 3 clips (with records): a 4th removes the least recently used, passing over one
    being served; the user's files, a clip without its record, links, a folder and a clip
    being made are never touched; a restart orders the clips by their last use."""
    from clip_hitchhiker.search.clip_cache import ClipCache

    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(b"n" * 5000)
    (folder / "a0_1_2_mp4.mp4").write_bytes(b"no record" * 1000)
    (folder / "a1_1_2_mp4.mp4").symlink_to(folder / "notes.txt")
    (folder / "a1_1_2_mp4.json").write_text(json.dumps(META))
    (folder / "a2_1_2_mp4.mp4").mkdir()
    (folder / "a2_1_2_mp4.json").write_text(json.dumps(META))
    (folder / "tmp1234.mp4.part").write_bytes(b"being made" * 1000)
    others = sorted(p.name for p in folder.iterdir())

    def clips():
        return sorted(p.stem for p in folder.iterdir()
                      if p.name not in others and p.suffix == ".mp4")

    def records():
        return sorted(p.stem for p in folder.iterdir()
                      if p.name not in others and p.suffix == ".json")

    cache = ClipCache(folder, max_bytes=3 * ENTRY)
    keys = [f"{i:x}" * 4 + "_1000_2000_mp4" for i in range(1, 8)]  # 1111_..., 2222_, ...
    add_clip(cache, keys[0]).close()
    add_clip(cache, keys[1]).close()
    served = add_clip(cache, keys[2])  # held open: being served
    file, _ = cache.open(keys[0])  # used again: now more recent than keys[1]
    file.close()
    assert clips() == records() == keys[:3]
    add_clip(cache, keys[3]).close()
    assert clips() == records() == [keys[0], keys[2], keys[3]]
    add_clip(cache, keys[4]).close()  # keys[2] is the least recent but is being served
    assert clips() == records() == [keys[2], keys[3], keys[4]]
    assert served.read() == b"x" * 1000
    served.close()
    add_clip(cache, keys[5]).close()
    assert clips() == records() == [keys[3], keys[4], keys[5]]
    assert cache.open(keys[2]) is None
    file, _ = cache.open(keys[3])
    file.close()
    # A restart with room for two: the order of use survives it, in the records' mtimes.
    add_clip(ClipCache(folder, max_bytes=2 * ENTRY), keys[6]).close()
    assert clips() == records() == [keys[3], keys[6]]
    assert sorted(p.name for p in folder.iterdir()
                  if p.stem not in keys) == others  # nothing else was touched
    assert (folder / "notes.txt").read_bytes() == b"n" * 5000
    assert (folder / "a0_1_2_mp4.mp4").read_bytes() == b"no record" * 1000


def test_the_servers_clip_cache_is_bounded(colour, tmp_path):
    """With room for no clip, the cache keeps the clip being served only until the next one
    is made: exactly its clip and record remain."""
    from starlette.testclient import TestClient

    cache = tmp_path / "cache"
    service = server.SearchService(VideoIndex.open(colour["index"]), cache, cache_max_bytes=0)
    client = TestClient(server.create_app(service))
    sha = service.index.table["sha256"][service.row(7)][:32]
    first = client.get("/api/clip/7?start=1&end=3")
    assert first.status_code == 200
    assert sorted(p.name for p in cache.iterdir()) == [f"{sha}_1000_3000_mp4.json",
                                                       f"{sha}_1000_3000_mp4.mp4"]
    assert client.get("/api/clip/7?start=1&end=3").content == first.content  # from the cache
    assert client.get("/api/clip/7?start=2&end=4").status_code == 200
    assert sorted(p.name for p in cache.iterdir()) == [f"{sha}_2000_4000_mp4.json",
                                                       f"{sha}_2000_4000_mp4.mp4"]


def test_serve_takes_the_cache_size_in_mb(colour, tmp_path, monkeypatch, capsys):
    made = []
    monkeypatch.setattr(server, "run_server", lambda app, host, port: None)
    monkeypatch.setattr(server.SearchService, "warm_up", lambda service: made.append(service))
    serve = ["serve", "--index", str(colour["index"]), "--port", str(free_port()), "--cache",
             str(tmp_path / "cache")]
    search_videos.main(search_videos.parse_args(serve))
    search_videos.main(search_videos.parse_args(serve + ["--cache_max_mb", "0.5"]))
    assert [s.clips.max_bytes for s in made] == [2048 * 10**6, 500_000]
    for bad in ("-1", "nan"):
        with pytest.raises(SystemExit):
            search_videos.parse_args(serve + ["--cache_max_mb", bad])
    assert "--cache_max_mb must be a number >= 0, got nan" in capsys.readouterr().err


def test_a_clip_must_start_within_the_video_and_ends_at_its_end(colour, client):
    duration = float(VideoIndex.open(colour["index"]).table["duration"][7])
    past = client.get("/api/clip/7", params={"start": 100, "end": 200})
    assert past.status_code == 400
    assert past.json()["error"] == f"start=100 is past the end of video 7 ({duration:.3f} s)"
    assert client.get("/api/play/7", params={"start": duration, "end": 200}).status_code == 400
    whole = client.get("/api/clip/7", params={"start": 1, "end": 1e7})
    assert whole.status_code == 200
    assert whole.content == client.get("/api/clip/7", params={"start": 1, "end": duration}).content


def test_play_gives_the_original_for_a_browser_video(tmp_path):
    data = search_synthetic.build_colour_index(tmp_path, pix_fmt="yuv420p")
    from starlette.testclient import TestClient

    service = server.SearchService(VideoIndex.open(data["index"]), tmp_path / "cache")
    client = TestClient(server.create_app(service))
    assert client.get("/api/play/3?start=1&end=2").json() == {
        "url": "/api/video/3", "offset": 0.0, "method": "original"}
    assert not (tmp_path / "cache").exists()
    # Changed after it was played once: the page hears of it, not only the video element.
    os.utime(service.index.table["path"][service.row(3)])
    changed = client.get("/api/play/3?start=1&end=2")
    assert changed.status_code == 404 and "changed since it was indexed" in changed.json()["error"]


def test_the_scorer_thread_uses_the_creators_thread_counts(colour, tmp_path):
    """OpenMP's thread count is per thread: a new thread would run FAISS on every core."""
    import faiss

    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        service = server.SearchService(VideoIndex.open(colour["index"]), tmp_path)
        counts = service.submit(lambda: (torch.get_num_threads(),
                                         faiss.omp_get_max_threads())).result()
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])
    assert counts == (1, 1)
