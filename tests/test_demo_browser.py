"""The web demo in a real browser (Debian's chromium through selenium, software WebGL, no
network): the page loads from the app alone, a prompt is submitted, progress shows, both 3D
views draw and turn, and the GLB download is a mesh trimesh reads.

Skips without chromium, chromedriver or selenium, unless ``POINTDIFF_REQUIRE_DATA=1`` (CI),
where their absence fails. It serves the shipped checkpoint (~15 s on 2 idle cores;
``POINTDIFF_DEMO_CHECKPOINT=DIR``: another).
``POINTDIFF_DEMO_SCREENSHOT=FILE`` saves the page with its result (docs/demo.png).
"""

import base64
import importlib.util
import io
import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from pointdiff.demo.server import DemoApp, make_server
from pointdiff.pipeline import load_pipeline

CHROMIUM = Path("/usr/lib/chromium/chromium")  # the binary; /usr/bin/chromium is a wrapper
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "pointdiff-small"
# what keeps WebGL alive on a CPU-only machine: SwiftShader through ANGLE, never
# --disable-software-rasterizer (it removes the software path, and WebGL with it)
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--window-size=1360,900",
]


def _browser_missing() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    if not missing:
        return None
    why = f"needs {', '.join(missing)} (make sysdeps installs chromium and chromium-driver)"
    if os.environ.get("POINTDIFF_REQUIRE_DATA") == "1":
        pytest.fail(f"POINTDIFF_REQUIRE_DATA=1 but the browser test {why}", pytrace=False)
    return why


@pytest.fixture(scope="module")
def demo_url():
    if why := _browser_missing():
        pytest.skip(why)
    checkpoint = os.environ.get("POINTDIFF_DEMO_CHECKPOINT", str(SHIPPED))
    app = DemoApp(load_pipeline(checkpoint), max_waiting=2, name=Path(checkpoint).name)
    server = make_server(app, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    app.close()


@pytest.fixture(scope="module")
def driver(demo_url, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    home = tmp_path_factory.mktemp("chromium-home")  # crash reports and caches stay out of HOME
    os.environ["XDG_CONFIG_HOME"] = str(home / "config")
    os.environ["XDG_CACHE_HOME"] = str(home / "cache")
    os.environ["SE_OFFLINE"] = "true"
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # the explicit Service: selenium would otherwise look for a driver online first
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    d.set_script_timeout(30)
    yield d
    d.quit()


def _wait(driver, script: str, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        error = driver.execute_script("return window.__demo && window.__demo.error")
        assert not error, f"page error while waiting for {what}: {error}"
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _pixels(driver, canvas_id: str) -> np.ndarray:
    """The canvas's last frame (the renderer keeps its drawing buffer), whole, wherever the
    page is scrolled."""
    url = driver.execute_script(f"return document.getElementById('{canvas_id}').toDataURL()")
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), float)


def _drawn(img: np.ndarray) -> float:
    """Share of pixels that differ from the background colour (the top-left pixel)."""
    return float((np.abs(img - img[0, 0]).sum(-1) > 30).mean())


def test_prompt_to_interactive_views_and_downloads(driver, demo_url):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.get(demo_url)
    _wait(driver, "return window.__demo && window.__demo.loaded", 60, "the page to load")
    renderer = driver.execute_script("return __demo.renderer")
    assert renderer, "no WebGL renderer"
    examples = driver.find_elements(By.CSS_SELECTOR, "#examples button")
    assert len(examples) >= 3
    examples[0].click()
    prompt = driver.find_element(By.ID, "prompt").get_attribute("value")
    assert prompt == examples[0].text
    driver.find_element(By.ID, "generate").click()
    # progress: the queue position at once, then the stage and step while it samples
    _wait(driver, "return __demo.progress.length > 0", 10, "progress")
    _wait(driver, "return __demo.ready && __demo.shown", 600, "the result")
    progress = driver.execute_script("return __demo.progress")
    assert progress[0].startswith("queued"), progress
    assert any(p.startswith("base: step ") for p in progress), progress
    message = driver.find_element(By.ID, "message").text
    assert message.startswith("done"), message
    if path := os.environ.get("POINTDIFF_DEMO_SCREENSHOT"):
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(path)

    views = ("cloud-view", "mesh-view")
    before = [_pixels(driver, v) for v in views]
    for name, img in zip(("cloud", "mesh"), before, strict=True):
        assert img.std() > 5 and _drawn(img) > 0.01, f"the {name} view is blank"
    driver.find_element(By.ID, "rotate-right").click()
    turned = [_pixels(driver, v) for v in views]
    for name, a, b in zip(("cloud", "mesh"), before, turned, strict=True):
        assert np.abs(a - b).mean() > 1.0, f"the {name} view did not change when turned"
    mesh_view = driver.find_element(By.ID, "mesh-view")
    driver.execute_script("arguments[0].scrollIntoView()", mesh_view)
    ActionChains(driver).drag_and_drop_by_offset(mesh_view, 120, 40).perform()  # orbit
    assert np.abs(_pixels(driver, views[1]) - turned[1]).mean() > 1.0, "dragging did not orbit"

    link = driver.find_element(By.CSS_SELECTOR, 'a.download[data-file="mesh.glb"]')
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as resp:
        assert resp.headers["Content-Type"] == "model/gltf-binary"
        glb = resp.read()
    mesh = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
    assert len(mesh.faces) > 0 and len(mesh.vertices) > 0
    assert driver.find_elements(By.CSS_SELECTOR, "#gallery .item img"), "no gallery thumbnail"

    # offline: every request went to the app itself
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    outside = [u for u in urls if not u.startswith((demo_url, "data:", "blob:"))]
    assert urls and not outside, outside
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_a_bad_prompt_is_refused_in_the_page(driver, demo_url):
    from selenium.webdriver.common.by import By

    driver.get(demo_url)
    _wait(driver, "return window.__demo && window.__demo.loaded", 60, "the page to load")
    driver.find_element(By.ID, "prompt").send_keys("a chair")
    steps = driver.find_element(By.ID, "num_samples")
    steps.clear()
    steps.send_keys("99")
    driver.find_element(By.ID, "generate").click()
    text = _wait(driver, "return document.getElementById('message').textContent", 10, "a message")
    assert text.startswith("num_samples: must be an integer from 1 to"), text
    assert "invalid" in steps.get_attribute("class")
