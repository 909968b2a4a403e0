"""Drive the real page with Debian's chromium through Playwright's Python API.

Needs /usr/bin/chromium (`apt-get install -y chromium`; never `playwright install`); skipped without it.
Set FRACTURELENS_SCREENSHOT=assets/screenshots/app.png to save the README screenshot from this test.
Every page checks that the browser never contacts a host other than 127.0.0.1 (works offline).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.serve import running_app
from model.common import EXAMPLES_DIR
from tests.helpers import CHROMIUM, DECISIONS, MODEL, SERVER_ARGS, local_page, synthetic_xray

EXAMPLES = EXAMPLES_DIR
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed"),
]


def example(role: str) -> Path:
    """A committed example by its role (assets/examples/examples.json: "clear fracture", "normal", "borderline")."""
    return EXAMPLES / json.loads((EXAMPLES / "examples.json").read_text())["examples"][role]["file"]

LONG_NAME = "of_a_left_wrist_radiograph_exported_from_the_department_pacs"


def _report_dir(root: Path) -> Path:
    """A tiny report folder in the layout of `model.evaluate` / `calibration.report` (made here, so the
    test does not depend on the committed reports)."""
    (root / "test").mkdir(parents=True)
    (root / "test" / "metrics.json").write_text(json.dumps({
        "data": ["synthetic"], "split": "test", "n": 100, "n_fractured": 20, "auroc": 0.8123,
        "auroc_ci95": [0.7, 0.9], "at_threshold": {"threshold": 0.1, "recall": 0.95, "specificity": 0.4}}))
    Image.new("RGB", (320, 240), (40, 90, 200)).save(root / "test" / "roc.png")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not MODEL.is_file():
        pytest.fail(f"model file missing: {MODEL}")
    tmp = tmp_path_factory.mktemp("gradio-temp")
    examples = tmp_path_factory.mktemp("examples")  # two synthetic example X-rays to click
    for i in (1, 2):  # different probabilities; long names, as real files have (they must wrap, not be clipped)
        synthetic_xray(300, 380, seed=19 + i).save(examples / f"example_{i}_{LONG_NAME}.png")
    report = _report_dir(tmp_path_factory.mktemp("report"))
    args = [*SERVER_ARGS, "--examples", str(examples), "--report-dir", str(report)]
    with running_app(args, env={"GRADIO_TEMP_DIR": str(tmp)}) as (url, log):
        yield url


def _threshold(text: str) -> float:
    m = re.search(r"Threshold in force: ([0-9.]+)%", text)
    assert m, text
    return float(m.group(1)) / 100


def _decision(page) -> str:
    """The decision heading without its strength ("Fracture suspected (borderline)" -> "Fracture suspected")."""
    text = page.locator("#pred .output-class").inner_text().strip()
    return text.removesuffix(" (borderline)")


def _move_slider(page, elem_id: str, key: str, steps: int) -> None:
    rng = page.locator(f"#{elem_id} input[type=range]")
    rng.focus()
    for _ in range(steps):
        rng.press(key)


def test_upload_decision_heatmap_slider(server, browser, tmp_path):
    from playwright.sync_api import expect

    # a committed example (FracAtlas test split, CC BY 4.0): the README screenshot shows a real radiograph
    png = tmp_path / "xray.png"
    png.write_bytes(example("clear fracture").read_bytes())
    with local_page(browser, server, viewport={"width": 1360, "height": 1000}) as page:
        expect(page.locator("#banner")).to_contain_text("not a medical device", timeout=30000)
        before = _threshold(page.locator("#oppoint").inner_text())

        page.locator("#xray input[type=file]").set_input_files(str(png))
        expect(page.locator("#pred .output-class")).not_to_be_empty(timeout=30000)
        assert _decision(page) in DECISIONS
        expect(page.locator("#pred")).to_contain_text("Fracture probability (calibrated)")
        expect(page.locator("#source")).to_contain_text("File: xray.png")  # which image is shown
        heat = page.locator("#cam img").first
        heat.wait_for(state="visible", timeout=20000)
        expect(heat).to_have_js_property("complete", True)
        expect(page.locator("#input_view img").first).to_be_visible()
        # the heatmap carries its colour bar beside the film: wider than the X-ray itself
        film_w = page.locator("#input_view img").first.evaluate("img => img.naturalWidth")
        assert heat.evaluate("img => img.naturalWidth") > film_w > 0
        # how far the probability is from the threshold: the bar, and the words
        bar = page.locator("#strength img").first
        bar.wait_for(state="visible", timeout=20000)
        assert bar.evaluate("img => img.naturalWidth") > 0
        expect(page.locator("#oppoint")).to_contain_text(re.compile(r"times (above|below) the threshold in odds "
                                                                    r"\((borderline|clear):"))
        expect(page.locator("#cam_note")).to_contain_text("colour bar")
        expect(page.locator("#region .output-class")).not_to_be_empty()
        expect(page.locator("#oppoint")).to_contain_text("Calibrated probability")
        expect(page.locator("#oppoint")).to_contain_text("the threshold")
        expect(page.locator("#cam_note")).to_contain_text("Grad-CAM")
        assert _threshold(page.locator("#oppoint").inner_text()) == pytest.approx(before, abs=1e-3)
        expect(page.locator("#warning .fl-warning")).to_have_count(0)  # a radiograph-like image

        # heatmap opacity: the overlay is re-blended (new image) without re-running the analysis
        src = heat.get_attribute("src")
        _move_slider(page, "opacity", "ArrowRight", 6)
        expect(page.locator("#cam img").first).not_to_have_attribute("src", src, timeout=10000)

        # target-recall slider from the keyboard: 0.95 -> 0.85 (ten steps of 0.01)
        _move_slider(page, "recall", "ArrowLeft", 10)
        expect(page.locator("#recall input[type=number]")).to_have_value(re.compile(r"^0\.85"), timeout=5000)
        expect(page.locator("#oppoint")).to_contain_text("target recall of 85%", timeout=10000)
        after = _threshold(page.locator("#oppoint").inner_text())
        assert after > before, "a lower target recall must raise the threshold in force"
        assert _decision(page) in DECISIONS

        # back to the default for the screenshot, with the decision and the threshold in force on screen
        _move_slider(page, "recall", "ArrowRight", 10)
        _move_slider(page, "opacity", "ArrowLeft", 6)
        expect(page.locator("#oppoint")).to_contain_text("target recall of 95%", timeout=10000)
        assert _threshold(page.locator("#oppoint").inner_text()) == pytest.approx(before, abs=1e-3)


def test_non_xray_shows_the_warning(server, browser, tmp_path):
    from playwright.sync_api import expect

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:300, 0:400]
    rgb = np.stack([(xx * 0.6) % 255, (yy * 0.8) % 255, 255 - (xx + yy) % 255], -1) + rng.normal(0, 20, (300, 400, 3))
    photo = tmp_path / "holiday_photo.png"
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(photo)
    with local_page(browser, server) as page:
        page.locator("#xray input[type=file]").set_input_files(str(photo))
        warning = page.locator("#warning .fl-warning")
        expect(warning).to_contain_text("Not assessed: this does not look like a radiograph", timeout=30000)
        expect(warning).to_contain_text("Reason:")
        expect(warning).to_be_visible()
        # no verdict, no probability, no body region, heatmap or probability bar until the user asks for it
        expect(page.locator("#pred .output-class")).to_have_text("Not assessed")
        expect(page.locator("#pred")).not_to_contain_text("Fracture probability")
        expect(page.locator("#source")).to_contain_text("File: holiday_photo.png")
        expect(page.locator("#region .output-class")).to_have_count(0)
        expect(page.locator("#cam img")).to_have_count(0)
        expect(page.locator("#strength img")).to_have_count(0)
        page.locator("#reveal input[type=checkbox]").check()
        expect(page.locator("#pred")).to_contain_text("not meaningful", timeout=10000)
        expect(page.locator("#pred .output-class")).to_have_text("Not assessed")
        expect(page.locator("#region .output-class")).not_to_be_empty(timeout=10000)  # revealed with it
        expect(page.locator("#cam img").first).to_be_visible(timeout=10000)
        page.locator("#reveal input[type=checkbox]").uncheck()
        expect(page.locator("#region .output-class")).to_have_count(0, timeout=10000)


def test_unreadable_file_shows_a_clear_message(server, browser, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello, I am text")
    with local_page(browser, server) as page:
        page.locator("#xray input[type=file]").set_input_files(str(bad))
        expect(page.locator("#status .fl-error")).to_contain_text("Could not read this file", timeout=30000)
        expect(page.locator("#pred .output-class")).to_have_count(0)


def test_model_card_tab(server, browser):
    from playwright.sync_api import expect

    with local_page(browser, server) as page:
        page.get_by_role("tab", name="Model card").click()
        card = page.locator("#model_card")
        expect(card).to_contain_text("Training data", timeout=20000)
        expect(card).to_contain_text("0.812 (95% CI 0.700 to 0.900)")  # from the report folder
        expect(card).to_contain_text("Limitations")
        expect(card).to_contain_text("not a medical device")
        plot = page.locator("#card_plots img").first
        expect(plot).to_be_visible()
        assert plot.evaluate("img => img.naturalWidth") == 320


def test_clicking_an_example_analyses_it(server, browser):
    from playwright.sync_api import expect

    with local_page(browser, server) as page:
        page.locator("#examples").get_by_text("example_2").click()
        expect(page.locator("#pred .output-class")).not_to_be_empty(timeout=30000)
        assert _decision(page) in DECISIONS
        expect(page.locator("#source")).to_contain_text("example_2_")
        page.locator("#cam img").first.wait_for(state="visible", timeout=20000)
        # the example file itself is kept (only uploads are deleted): click it again, same answer
        expect(page.locator("#oppoint")).to_contain_text("Calibrated probability", timeout=30000)
        # compare the result line only: while an event runs, Gradio overlays a progress timer ("0.0s")
        first = next(line for line in page.locator("#oppoint").inner_text().splitlines()
                     if "Calibrated probability" in line).strip()
        # the upload box is empty again (no stale link to the deleted upload), ready for the next file
        expect(page.locator("#xray input[type=file]")).to_have_count(1)
        expect(page.locator("#xray")).not_to_contain_text("example_2")
        page.locator("#examples").get_by_text("example_1").click()
        expect(page.locator("#oppoint")).not_to_contain_text(first, timeout=30000)
        page.locator("#examples").get_by_text("example_2").click()
        expect(page.locator("#oppoint")).to_contain_text(first, timeout=30000)
        expect(page.locator("#status .fl-error")).to_have_count(0)


def test_a_new_upload_replaces_the_old_one_and_a_phone_sees_the_decision_first(server, browser, tmp_path):
    """On a 390 px wide screen: drop a file, then another without clearing the box; the decision sits
    above the target-recall slider."""
    from playwright.sync_api import expect

    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello, I am text")
    good = tmp_path / "xray.png"
    good.write_bytes(example("clear fracture").read_bytes())
    with local_page(browser, server, viewport={"width": 390, "height": 844}) as page:
        page.locator("#xray input[type=file]").set_input_files(str(bad))
        expect(page.locator("#status .fl-error")).to_contain_text("Could not read this file", timeout=30000)
        page.locator("#xray input[type=file]").set_input_files(str(good))  # no x pressed in between
        expect(page.locator("#pred .output-class")).not_to_be_empty(timeout=30000)
        expect(page.locator("#status .fl-error")).to_have_count(0)
        expect(page.locator(".toast-body")).to_have_count(0, timeout=15000)  # the rejected file's toast went
        y = {k: page.locator(sel).first.bounding_box()["y"] for k, sel in
             (("upload", "#xray"), ("decision", "#pred"), ("slider", "#recall"))}
        assert y["upload"] < y["decision"] < y["slider"], y
        # the example buttons' long names wrap within the screen instead of being clipped
        buttons = page.locator("#examples button")
        assert buttons.count() >= 2
        for i in range(buttons.count()):
            b = buttons.nth(i)
            assert b.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), b.inner_text()
            box = b.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390 + 1, box


def test_the_committed_examples_show_a_fracture_a_normal_and_a_borderline_case(browser, tmp_path):
    """The app as shipped (its own examples, labelled by role): the normal example is called normal, the
    borderline one is "Fracture suspected (borderline)" at the default target and the slider turns it into
    "No fracture detected"."""
    from playwright.sync_api import expect

    with running_app(SERVER_ARGS, env={"GRADIO_TEMP_DIR": str(tmp_path)}) as (url, _), \
            local_page(browser, url, viewport={"width": 1360, "height": 1000}) as page:
        examples = page.locator("#examples")
        expect(examples).to_contain_text("Clear fracture", timeout=30000)
        examples.get_by_text("Normal").click()
        expect(page.locator("#pred .output-class")).to_have_text("No fracture detected", timeout=30000)
        examples.get_by_text("Clear fracture").click()
        expect(page.locator("#pred .output-class")).to_have_text(re.compile(r"^Fracture suspected"), timeout=30000)
        page.locator("#cam img").first.wait_for(state="visible", timeout=20000)
        shot = os.environ.get("FRACTURELENS_SCREENSHOT")  # the README's screenshot: the app as shipped
        if shot:
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            page.wait_for_timeout(800)
            page.screenshot(path=shot, full_page=True)
        examples.get_by_text("Borderline").click()
        expect(page.locator("#pred .output-class")).to_have_text("Fracture suspected (borderline)", timeout=30000)
        expect(page.locator("#oppoint")).to_contain_text("(borderline:")
        _move_slider(page, "recall", "ArrowLeft", 15)  # 0.95 -> 0.80
        expect(page.locator("#pred .output-class")).to_have_text(re.compile(r"^No fracture detected"), timeout=10000)
        shot = os.environ.get("FRACTURELENS_SCREENSHOT_DIR")
        if shot:
            _move_slider(page, "recall", "ArrowRight", 15)
            expect(page.locator("#pred .output-class")).to_have_text("Fracture suspected (borderline)",
                                                                     timeout=10000)
            page.wait_for_timeout(800)
            page.screenshot(path=str(Path(shot) / "borderline.png"), full_page=True)
