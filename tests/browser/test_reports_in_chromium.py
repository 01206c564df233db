"""Every report, opened in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
installed by .ci/run) through Selenium, at a 1,400 px wide window.

For each page (demo, evaluate, verify, explain, audit, each written by its command's ``--out DIR``) it
asserts that nothing overflows horizontally (the document is no wider than the window),
that every image has loaded (``complete`` with a natural width), and that the page made no network
request (Chromium's performance log lists every request: only ``file:`` and ``data:`` URLs are allowed).
Each page's figures are written to ``browser-figures.json`` and a screenshot beside the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from faithclip.cli.main import main

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WIDTH = 1400


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip(
            "Chromium is absent: install Debian's chromium and chromium-driver (as .ci/run does) "
            "to check the reports in a browser"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},1000",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """The five report pages, made by the commands (small settings)."""
    root = tmp_path_factory.mktemp("reports")
    from faithclip.shapes.world import ShapesWorld

    scene = ShapesWorld(image_size=64).multi_object_set(1, seed=5).scene(0)
    photo = root / "photo.png"
    scene.image.resize((120, 90)).save(photo)  # non-square: the crop is outlined
    commands = {
        "demo": ["demo", "--scenes", "2", "--no-audit"],
        "evaluate": [
            "evaluate",
            "--data",
            "shapes",
            "--count",
            "3",
            "--methods",
            "attention_eclip,grad_eclip,rise",
            "--method-option",
            "rise.masks=100",
            "--metrics",
            "all",
            "--no-progress",
        ],
        "verify": ["verify", "--no-progress"],
        "explain": [
            "explain",
            str(photo),
            "--text",
            scene.caption,
            "--text",
            "a blue square",
            "--text",
            "a zebra",
            "--methods",
            "attention_eclip,grad_cam",
            "--no-progress",
        ],
        "audit": [
            "audit",
            "--scenes",
            "8",
            "--map-images",
            "1",
            "--ladder",
            "--correctness",
            "--p2-scenes",
            "6",
            "--p2-ladders",
            "1",
            "--p2-rungs",
            "3",
            "--correctness-alphas",
            "0.5",
            "--resamples",
            "200",
            "--methods",
            "attention_eclip",
            "rollout",
        ],
    }
    pages = {}
    for name, arguments in commands.items():
        out = root / name
        assert main(arguments + ["--out", str(out)]) == 0, name
        pages[name] = out / "report.html"
    return pages


def measure(driver, page: Path) -> dict:
    driver.get_log("performance")  # drop earlier entries
    driver.set_window_size(WIDTH, 1000)
    driver.get(page.as_uri())
    figures = driver.execute_script("""
        const images = Array.from(document.images);
        return {width: document.documentElement.scrollWidth, window: window.innerWidth,
                height: document.documentElement.scrollHeight, images: images.length,
                loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
                charset: document.characterSet};""")
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    figures["network_requests"] = [url for url in requests if not url.startswith(("file:", "data:"))]
    driver.set_window_size(WIDTH, min(figures["height"] + 100, 6000))
    driver.save_screenshot(str(page.with_suffix(".png")))
    return figures


@pytest.mark.parametrize("name", ["demo", "evaluate", "verify", "explain", "audit"])
def test_report_fits_loads_and_stays_offline(browser, reports, name):
    figures = measure(browser, reports[name])
    record = reports[name].parent.parent / "browser-figures.json"
    known = json.loads(record.read_text()) if record.exists() else {}
    known[name] = figures
    record.write_text(json.dumps(known, indent=1))
    print(name, figures)
    assert figures["charset"] == "UTF-8"
    assert figures["width"] <= figures["window"] <= WIDTH, f"{name} overflows: {figures}"
    assert figures["images"] == figures["loaded"], f"{name}: images not loaded: {figures}"
    assert figures["network_requests"] == [], f"{name} asked the network: {figures['network_requests']}"
    if name in ("demo", "evaluate", "explain"):  # pages with maps (verify's and the audit's are tables)
        assert figures["images"] > 0


def test_compared_panels_share_one_scale(browser, reports):
    """The explain page's grid (two methods x three prompts, one prompt absent): read from the page in the
    browser, every panel of one method has the same colour scale, whose top is the largest value of that
    method's maps (from the JSON records), and the scale starts at 0 for these non-negative maps."""
    browser.get(reports["explain"].as_uri())
    scales = browser.execute_script(
        "return Array.from(document.querySelectorAll('img[data-colour-scales]')).map(i => i.dataset.colourScales);"
    )
    assert len(scales) == 1  # one image: one grid
    panels = json.loads(scales[0])
    assert len(panels) == 6
    out = reports["explain"].parent
    record = json.loads((out / "explain.json").read_text())
    for method in ("attention_eclip", "grad_cam"):
        mine = [p for p in panels if p["method"] == method]
        assert len(mine) == 3 and len({(p["low"], p["high"]) for p in mine}) == 1, mine
        values = [
            v
            for e in record["explanations"]
            if e["method"] == method
            for row in json.loads((out / e["json"]).read_text())["map"]
            for v in row
        ]
        assert mine[0]["high"] == max(abs(v) for v in values)  # the same floats, written and read back
        assert mine[0]["low"] == (0.0 if min(values) >= 0 else -mine[0]["high"])
