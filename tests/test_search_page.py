"""The search page in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by Selenium against `search_videos.py serve` on a synthetic index.
Types a query, checks the first card, plays the moment and checks where the video is, moves with
the arrow keys, seeks on the strip, drops an image, and asks for more like this."""
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import search_synthetic

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver; pip install selenium"
webdriver = pytest.importorskip("selenium.webdriver", reason=f"needs Selenium: {INSTALL}")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason=f"needs Chromium and its driver: {INSTALL}")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,900"]
WEB = ("red", "green", "blue", "yellow", "purple")  # 4:2:0 H.264: the browser plays the files
RAW = ("teal", "orange", "pink", "black", "brown")  # 4:4:4 H.264: played through clips


@pytest.fixture(scope="module")
def page_index(tmp_path_factory):
    import search_videos

    root = tmp_path_factory.mktemp("page")
    model = search_synthetic.save_colour_clip(root / "colour.pt")
    truth = {**search_synthetic.build_segment_videos(root / "web", WEB, pix_fmt="yuv420p"),
             **search_synthetic.build_segment_videos(root / "raw", RAW, seed=1)}
    search_videos.main(search_videos.parse_args(
        ["index", str(root / "web"), str(root / "raw"), "--index", str(root / "index"),
         "--model", str(model), "--device", "cpu", "--num_workers", "0"]))
    return {"root": root, "truth": truth, "index": root / "index"}


@pytest.fixture(scope="module")
def served(page_index):
    """`search_videos.py serve` in its own process on a free port: its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "search_videos.py"), "serve", "--index",
         str(page_index["index"]), "--port", str(port), "--cache",
         str(page_index["root"] / "cache")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=REPO)
    try:
        line = process.stdout.readline()  # printed once the model is loaded
        assert line.startswith("serving "), line + process.stdout.read()
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="hitchhiker-chromium-")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, seconds=30, message="the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition, message)


def search(driver, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(text, Keys.ENTER)
    wait_for(driver, lambda d: f"for “{text}”" in d.find_element(By.ID, "summary").text)
    return driver.find_elements(By.CSS_SELECTOR, ".card")


def playback(driver):
    """(the time in the video, paused, the clip's offset) of the page's player."""
    return driver.execute_script(
        "const p = document.querySelector('#player');"
        "return [window.hitchhiker.videoTime(), p.paused, Number(p.dataset.offset)];")


def expected_hit(page_index, text):
    from clip_hitchhiker.search.video_index import VideoIndex

    return VideoIndex.open(page_index["index"]).search([text], k=1)[0]["hits"][0]


def clock(seconds):
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


def test_search_play_keys_strip_drop_and_more_like_this(page_index, served, browser,
                                                        tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(served)
    wait_for(browser, lambda d: "10 videos" in d.find_element(By.ID, "about").text)

    # Typed query + Enter: the first card is the red video, with the moment's times.
    cards = search(browser, "a red video")
    red = expected_hit(page_index, "a red video")
    assert red["video"] == page_index["truth"]["red"][0]
    first = cards[0]
    assert first.get_attribute("data-video") == red["video"]
    assert float(first.get_attribute("data-start")) == red["start"]
    assert float(first.get_attribute("data-end")) == red["end"]
    assert first.find_element(By.CSS_SELECTOR, ".when b").text == \
        f"{clock(red['start'])} – {clock(red['end'])}"
    assert first.find_element(By.CSS_SELECTOR, ".name").text == "red.mp4"
    # The thumbnail arrives after the card (the server decodes its frame): it must load.
    thumb = first.find_element(By.CSS_SELECTOR, ".thumb img")
    wait_for(browser, lambda d: thumb.get_attribute("naturalWidth") not in ("0", None),
             message="the first card's thumbnail to load")

    # Click: plays the file itself from the moment's start, and pauses at its end.
    first.find_element(By.CSS_SELECTOR, ".thumb").click()  # the card's middle is its strip
    wait_for(browser, lambda d: playback(d)[0] > red["start"] + 0.3 and not playback(d)[1],
             message="the video playing in the moment")
    time_now, _, offset = playback(browser)
    assert offset == 0 and red["start"] <= time_now <= red["end"]
    wait_for(browser, lambda d: playback(d)[1], seconds=red["end"] - red["start"] + 10,
             message="the video pausing at the moment's end")
    assert red["end"] - 0.05 <= playback(browser)[0] <= red["end"] + 0.3
    assert "end of the moment" in browser.find_element(By.ID, "now-title").text

    # Clicking the strip seeks there: a quarter of the way into the video.
    click_strip_at(browser, first, 0.25)
    wait_for(browser, lambda d: abs(playback(d)[0] - red["duration"] / 4) < 0.6,
             message="the strip's seek")

    # Arrow keys move between results (and play the selected one).
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN)
    wait_for(browser, lambda d: "selected" in d.find_elements(By.CSS_SELECTOR, ".card")[1]
             .get_attribute("class"))
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_UP)
    wait_for(browser, lambda d: "selected" in d.find_elements(By.CSS_SELECTOR, ".card")[0]
             .get_attribute("class"))

    # A 4:4:4 video plays through a clip of its moment; the page maps the clip's time back.
    teal = expected_hit(page_index, "a teal video")
    search(browser, "a teal video")[0].find_element(By.CSS_SELECTOR, ".thumb").click()
    wait_for(browser, lambda d: playback(d)[2] > 0 and playback(d)[0] > teal["start"] + 0.3,
             message="the clip playing")
    time_now, _, offset = playback(browser)
    assert offset == teal["start"] and teal["start"] <= time_now <= teal["end"]
    # Its strip clicked outside the moment: a clip from there, and the video time is that time.
    outside = teal["start"] / 2 if teal["start"] > 2 else (teal["end"] + teal["duration"]) / 2
    click_strip_at(browser, browser.find_elements(By.CSS_SELECTOR, ".card")[0],
                   outside / teal["duration"])
    wait_for(browser, lambda d: playback(d)[2] != teal["start"] and
             abs(playback(d)[0] - outside) < 0.6, message="the strip's seek outside the moment")

    # An image dropped on the page is the query.
    image = search_synthetic.colour_image(tmp_path / "green.png", "green")
    drop_file(browser, image)
    wait_for(browser, lambda d: "green.png" in d.find_element(By.ID, "summary").text)
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert cards[0].get_attribute("data-video") == page_index["truth"]["green"][0]

    # More like this: the moment's own video comes first.
    cards[0].find_element(By.CSS_SELECTOR, "button.similar").click()
    wait_for(browser, lambda d: "more like green.mp4" in d.find_element(By.ID, "summary").text)
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert cards[0].get_attribute("data-video") == page_index["truth"]["green"][0]
    browser.save_screenshot(str(tmp_path / "page.png"))
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def click_strip_at(driver, card, fraction):
    """Click a card's strip at this fraction of its width (of the video's duration)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    strip = card.find_element(By.CSS_SELECTOR, ".strip svg")
    ActionChains(driver).move_to_element_with_offset(
        strip, round((fraction - 0.5) * strip.size["width"]), 0).click().perform()


def drop_file(driver, path):
    """Drag and drop a file onto the page as a person would (Selenium cannot send files to a
    drop target: the events carry a DataTransfer holding it, as the browser's would)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    driver.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const file = new File([bytes], arguments[1], { type: "image/png" });
        const transfer = new DataTransfer();
        transfer.items.add(file);
        for (const type of ["dragenter", "dragover", "drop"]) {
          document.body.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true,
                                                           dataTransfer: transfer }));
        }""", data, Path(path).name)


def test_the_page_shows_a_json_error_not_a_trace(served, browser):
    from selenium.webdriver.common.by import By

    browser.get(served)
    assert len(search(browser, "a red video")) == 10
    search_box = browser.find_element(By.ID, "query")
    browser.execute_script("arguments[0].removeAttribute('maxlength')", search_box)
    browser.execute_script("arguments[0].value = 'x'.repeat(1001)", search_box)
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    error = browser.find_element(By.ID, "error").text
    assert error == "q has 1001 characters, more than 1000"
    assert json.dumps(error).count("Traceback") == 0 and os.sep + "site-packages" not in error
    assert browser.find_elements(By.CSS_SELECTOR, ".card") == []  # not the last search's cards
    assert browser.find_element(By.ID, "summary").text == ""


def test_a_video_that_fails_to_load_says_why(served, browser):
    """The player's error is shown with the server's reason (here /api/play is made to name a
    video the index does not hold, as a video changed between the two requests would be)."""
    from selenium.webdriver.common.by import By

    browser.get(served)
    search(browser, "a red video")
    browser.execute_script("""
        const fetchOriginal = window.fetch;
        window.fetch = (url, options) => String(url).startsWith("/api/play/")
          ? Promise.resolve(new Response(JSON.stringify(
              { url: "/api/video/999999", offset: 0, method: "original" })))
          : fetchOriginal(url, options);""")
    browser.find_elements(By.CSS_SELECTOR, ".card .thumb")[0].click()
    wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed(),
             message="the player's error")
    assert browser.find_element(By.ID, "error").text == "no video with id 999999 in this index"


def test_a_narrow_window_shows_the_results_first_and_nothing_overlaps(served, browser):
    """At 500 px and at a phone's 360 px: the player hidden until a result plays, the strip's
    axis above the buttons, every button inside its card (at 360 px "Download clip" ran 9 px
    past the card's edge) and nothing wider than the window (the search box pushed the Image
    button out)."""
    from selenium.webdriver.common.by import By

    size = browser.get_window_size()
    try:
        for width in (500, 360):
            browser.set_window_size(width, 900)
            browser.get(served)
            cards = search(browser, "a red video")
            page, inner = browser.execute_script(
                "const page = document.documentElement;"
                "return [[page.scrollWidth, page.clientWidth], window.innerWidth];")
            assert inner == width and page[0] == page[1], page  # nothing scrolls sideways
            pane = browser.find_element(By.ID, "player-pane")
            assert not pane.is_displayed()  # an empty player would fill the first screen
            for card in cards[:3]:
                axis = card.find_element(By.CSS_SELECTOR, ".strip .axis").rect
                actions = card.find_element(By.CSS_SELECTOR, ".actions").rect
                assert axis["y"] + axis["height"] <= actions["y"], (axis, actions)
                box = card.rect
                assert box["x"] + box["width"] <= width
                for button in card.find_elements(By.CSS_SELECTOR, ".actions button, .actions a"):
                    inside = button.rect
                    assert box["x"] <= inside["x"] and inside["x"] + inside["width"] <= \
                        box["x"] + box["width"], (width, button.text, inside, box)
        cards[0].find_element(By.CSS_SELECTOR, ".thumb").click()
        wait_for(browser, lambda d: pane.is_displayed() and not playback(d)[1],
                 message="the player shown once a result plays")
    finally:
        browser.set_window_size(size["width"], size["height"])


ATTACK_PAGE = """<!doctype html><html><body>
<img id="thumbnail" src="{served}api/thumbnail/0?t=1">
<video id="video" src="{served}api/video/0" preload="metadata"></video>
<script>
  window.seen = {{}};
  thumbnail.onload = () => {{ seen.thumbnail = "loaded"; }};
  thumbnail.onerror = () => {{ seen.thumbnail = "refused"; }};
  video.onloadedmetadata = () => {{ seen.video = `loaded, ${{video.duration}} s`; }};
  video.onerror = () => {{ seen.video = "refused"; }};
</script></body></html>"""


def test_another_web_page_cannot_load_the_videos_or_thumbnails(served, browser):
    """A page of another origin (here another port of 127.0.0.1: a site the user visits would
    do the same) embeds the server's thumbnail and video: Chromium marks the requests
    Sec-Fetch-Site: same-site and the server refuses them, so that page cannot show the user's
    frames nor read the videos' durations and sizes."""
    import http.server
    import threading

    page = ATTACK_PAGE.format(served=served).encode()

    class AttackPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AttackPage)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{other.server_address[1]}/")
        wait_for(browser, lambda d: len(d.execute_script("return window.seen") or {}) == 2,
                 message="the other page's thumbnail and video to load or fail")
        assert browser.execute_script("return window.seen") == {"thumbnail": "refused",
                                                                 "video": "refused"}
    finally:
        other.shutdown()
        other.server_close()
