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
    assert first.find_element(By.CSS_SELECTOR, ".thumb img").get_attribute("naturalWidth") != "0"

    # Click: plays the file itself from the moment's start, and pauses at its end.
    first.click()
    wait_for(browser, lambda d: playback(d)[0] > red["start"] + 0.3 and not playback(d)[1],
             message="the video playing in the moment")
    time_now, _, offset = playback(browser)
    assert offset == 0 and red["start"] <= time_now <= red["end"]
    wait_for(browser, lambda d: playback(d)[1], seconds=red["end"] - red["start"] + 10,
             message="the video pausing at the moment's end")
    assert red["end"] - 0.05 <= playback(browser)[0] <= red["end"] + 0.3
    assert "end of the moment" in browser.find_element(By.ID, "now-title").text

    # Clicking the strip seeks there: a quarter of the way into the video.
    strip = first.find_element(By.CSS_SELECTOR, ".strip svg")
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(browser).move_to_element_with_offset(
        strip, -strip.size["width"] // 4, 0).click().perform()
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
    search(browser, "a teal video")[0].click()
    wait_for(browser, lambda d: playback(d)[2] > 0 and playback(d)[0] > teal["start"] + 0.3,
             message="the clip playing")
    time_now, _, offset = playback(browser)
    assert offset == teal["start"] and teal["start"] <= time_now <= teal["end"]

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
    search_box = browser.find_element(By.ID, "query")
    browser.execute_script("arguments[0].removeAttribute('maxlength')", search_box)
    browser.execute_script("arguments[0].value = 'x'.repeat(1001)", search_box)
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    error = browser.find_element(By.ID, "error").text
    assert error == "q has 1001 characters, more than 1000"
    assert json.dumps(error).count("Traceback") == 0 and os.sep + "site-packages" not in error
