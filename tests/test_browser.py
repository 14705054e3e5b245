"""The demo page in headless Chromium: loads cleanly, Generate draws faces, nothing leaves localhost.

Skips without /usr/bin/chromium, /usr/bin/chromedriver or selenium. ANIMEGEN_SCREENSHOT=1 also saves
the screenshot to docs/img/serve.png; ANIMEGEN_SERVE_CKPT=PATH serves that checkpoint instead of a
tiny one trained here (for a screenshot worth showing).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY, write_images
from PIL import Image

from animegen import load_generator, serve
from animegen.cli import main

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("needs /usr/bin/chromium and /usr/bin/chromedriver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from selenium.webdriver.chrome.service import Service  # noqa: E402 - after the skips
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # seconds for any one thing the page does; a loaded 2-core machine can be slow


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    if os.environ.get("ANIMEGEN_SERVE_CKPT"):
        return load_generator(os.environ["ANIMEGEN_SERVE_CKPT"])
    root = tmp_path_factory.mktemp("browser")
    write_images(root / "faces", 16)
    run = root / "run"
    assert main(["train", "--data", str(root / "faces"), "--epochs", "1", "--run-dir", str(run), *TINY]) == 0
    return load_generator(run)


@pytest.fixture
def driver(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1280,1060",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    d.set_script_timeout(TIMEOUT)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _js_png(driver, element_id: str) -> bytes:
    """The bytes the page is showing in an <img>, read back through fetch() in the page."""
    data = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById(arguments[0]).src)
          .then((r) => r.blob())
          .then((b) => { const f = new FileReader(); f.onload = () => done(f.result); f.readAsDataURL(b); })
          .catch((e) => done("error: " + e));
        """,
        element_id,
    )
    assert data.startswith("data:image/png;base64,"), data[:80]
    return base64.b64decode(data.split(",", 1)[1])


def _natural_size(driver, element_id: str) -> tuple[int, int]:
    w, h = driver.execute_script(
        "const i = document.getElementById(arguments[0]); return [i.naturalWidth, i.naturalHeight];",
        element_id,
    )
    return w, h


def test_demo_page(gen, driver, tmp_path):
    app = serve.create_app(gen)
    s = gen.config.image_size
    face_scale = app.state.info["face_scale"]
    wait = WebDriverWait(driver, TIMEOUT)
    with serve.BackgroundServer(app) as origin:
        driver.get(origin + "/")
        grid = driver.find_element("id", "grid")
        wait.until(lambda d: grid.get_attribute("data-loads") == "1")
        wait.until(lambda d: _natural_size(d, "face")[0] == s * face_scale)
        wait.until(lambda d: _natural_size(d, "mix")[0] == s * face_scale)

        # Generate: seed 5, 24 faces, 8 per row.
        for element_id, value in (("seed", "5"), ("n", "24"), ("nrow", "8")):
            field = driver.find_element("id", element_id)
            field.clear()
            field.send_keys(value)
        driver.find_element("id", "generate").click()
        wait.until(lambda d: grid.get_attribute("data-loads") == "2")
        assert grid.get_attribute("data-seed") == "5"
        cell = s + serve.GRID_PADDING
        expected = (8 * cell + serve.GRID_PADDING, 3 * cell + serve.GRID_PADDING)
        assert _natural_size(driver, "grid") == expected
        shown = _js_png(driver, "grid")
        with Image.open(io.BytesIO(shown)) as im:
            assert im.format == "PNG" and im.size == expected
        link = driver.find_element("id", "grid-dl").get_attribute("href")
        assert link.startswith(origin + "/api/grid.png?") and "seed=5" in link
        with urllib.request.urlopen(link, timeout=TIMEOUT) as r:
            assert r.headers["content-type"] == "image/png" and r.read() == shown

        # Click face 10 (row 1, column 2) and see it large.
        box = grid.rect
        zoom = box["width"] / expected[0]
        x = (serve.GRID_PADDING + 2 * cell + s / 2) * zoom - box["width"] / 2
        y = (serve.GRID_PADDING + 1 * cell + s / 2) * zoom - box["height"] / 2
        ActionChains(driver).move_to_element_with_offset(grid, round(x), round(y)).click().perform()
        caption = driver.find_element("id", "face-caption")
        wait.until(lambda d: caption.text.endswith("face 10"))
        face_link = driver.find_element("id", "face-dl").get_attribute("href")
        assert "index=10" in face_link and "seed=5" in face_link
        with Image.open(io.BytesIO(_js_png(driver, "face"))) as im:
            assert im.size == (s * face_scale, s * face_scale)

        # Move the interpolation slider.
        before = driver.find_element("id", "mix").get_attribute("src")
        driver.execute_script(
            "const t = document.getElementById('t'); t.value = '0.8';"
            "t.dispatchEvent(new Event('input', {bubbles: true}));"
        )
        wait.until(lambda d: d.find_element("id", "mix").get_attribute("src") != before)
        wait.until(lambda d: "t=0.80" in (d.find_element("id", "mix-dl").get_attribute("href") or ""))
        assert driver.find_element("id", "t-out").text == "0.80"
        assert driver.find_element("id", "status").text == ""

        driver.save_screenshot(str(tmp_path / "serve.png"))
        if os.environ.get("ANIMEGEN_SCREENSHOT") == "1":
            (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(REPO / "docs" / "img" / "serve.png"))

        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
        names = driver.execute_script(
            "return performance.getEntries()"
            ".filter((e) => ['navigation', 'resource'].includes(e.entryType)).map((e) => e.name)"
        )
        assert names and names[0] == origin + "/"
        outside = [n for n in names if not (n.startswith(origin + "/") or n.startswith("blob:" + origin))]
        assert outside == [], outside
