"""The Worklist tab (`python -m app --pacs URL`) in Debian's chromium, against a loopback Orthanc.

Set FRACTURELENS_SCREENSHOT_DIR=assets/screenshots to save the README screenshot (worklist.png).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from app.serve import running_app
from tests.helpers import CHROMIUM, DECISIONS, SECRET_ID, SECRET_NAME, SERVER_ARGS, local_page
from tests.helpers import radiograph_instance as make_instance

pytestmark = [
    pytest.mark.browser, pytest.mark.orthanc,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed"),
]


def test_worklist_tab(browser, tmp_path):
    from playwright.sync_api import expect
    from pydicom.uid import generate_uid

    from pacs.orthanc import OrthancServer

    with OrthancServer() as srv:
        a, b = generate_uid(), generate_uid()
        for data in (make_instance("CR", a, seed=1)[1], make_instance("CR", a, seed=2)[1],
                     make_instance("DX", a, seed=3)[1],
                     make_instance("CT", a, pixels=np.full((64, 64), 1000, np.uint16))[1],
                     make_instance("CR", b, pixels=np.random.default_rng(0).integers(0, 4095, (256, 320))
                                   .astype(np.uint16))[1],
                     make_instance("CR", b, corrupt=True)[1]):  # pixel data cut short: the analysis fails
            srv.store(data)
        env = {"DICOMWEB_USER": srv.user, "DICOMWEB_PASSWORD": srv.password, "GRADIO_TEMP_DIR": str(tmp_path)}
        with running_app([*SERVER_ARGS, "--pacs", srv.dicomweb_url], env=env) as (url, log_path), \
                local_page(browser, url, viewport={"width": 1360, "height": 900}) as page:
            page.get_by_role("tab", name="Worklist").click()
            status = page.locator("#wl_status")
            expect(status).to_contain_text("5 radiograph instance(s): 0 scored, 5 not scored yet", timeout=30000)

            page.locator("#wl_scan").click()  # the bridge's scan with the app's Predictor
            expect(status).to_contain_text("scored and written back 4", timeout=90000)
            expect(status).to_contain_text("5 radiograph instance(s): 3 scored, 0 not scored yet, 1 not assessed, "
                                           "1 failed")

            srv.store(make_instance("DX", b, seed=11)[1])  # arrives after the scan
            page.locator("#wl_refresh").click()
            expect(status).to_contain_text("6 radiograph instance(s): 3 scored, 1 not scored yet, 1 not assessed, "
                                           "1 failed", timeout=30000)
            table = page.locator("#wl_table")
            expect(table).to_contain_text("not scored yet")
            expect(table).to_contain_text("Not assessed")
            expect(table).to_contain_text("Failed: a photograph or a drawing, not a radiograph")
            expect(table).to_contain_text("failed: image: could not read the DICOM pixel data")
            text = table.inner_text()
            assert "Fracture probability" in text and "CT" not in text.split()
            thumbs = table.locator("img[src^='data:image/png']")
            expect(thumbs.nth(4)).to_be_visible(timeout=10000)  # one per row (Gradio may add a hidden copy)
            assert all(thumbs.nth(i).evaluate("i => i.complete && i.naturalWidth > 0") for i in range(5))

            # patient identifiers: nowhere on the page until the box is ticked
            body = page.locator("body")
            for secret in (SECRET_ID, "Quixotic"):
                expect(body).not_to_contain_text(secret)
            page.locator("#wl_ids input[type=checkbox]").check()
            expect(table).to_contain_text(SECRET_ID, timeout=10000)
            expect(table).to_contain_text("Quixotic")
            # every column fits the tab: no horizontal scrolling to reach Patient ID and Study date
            page.wait_for_timeout(500)
            scroller = table.locator("table").first
            assert scroller.evaluate("t => { const w = t.closest('.table-wrap') || t.parentElement;"
                                     " return w.scrollWidth <= w.clientWidth + 1; }"), "the table scrolls sideways"
            box = table.get_by_text("20240102").first.bounding_box()
            assert box is not None and box["x"] + box["width"] <= 1360, box
            page.locator("#wl_ids input[type=checkbox]").uncheck()
            expect(body).not_to_contain_text(SECRET_ID, timeout=10000)

            shots = os.environ.get("FRACTURELENS_SCREENSHOT_DIR")
            if shots:
                Path(shots).mkdir(parents=True, exist_ok=True)
                page.wait_for_timeout(800)
                page.screenshot(path=str(Path(shots) / "worklist.png"), full_page=True)

            # a click on the top row opens it in the Analyse tab
            table.get_by_text("Fracture suspected").filter(visible=True).first.click()
            expect(page.get_by_role("tab", name="Analyse")).to_have_attribute("aria-selected", "true",
                                                                              timeout=30000)
            expect(page.locator("#pred .output-class")).not_to_be_empty(timeout=30000)
            assert page.locator("#pred .output-class").inner_text().strip().removesuffix(" (borderline)") in DECISIONS
            expect(page.locator("#oppoint")).to_contain_text("Calibrated probability")
            # the Analyse tab says which image it is (identifiers were switched off again: no patient)
            expect(page.locator("#source")).to_contain_text("PACS worklist: rank 1 of 6")
            expect(page.locator("#source")).not_to_contain_text("Quixotic")
            page.locator("#cam img").first.wait_for(state="visible", timeout=20000)
            log = Path(log_path).read_text()
        for secret in (SECRET_NAME, "Quixotic", SECRET_ID, "ACC-SECRET", srv.password):
            assert secret not in log
