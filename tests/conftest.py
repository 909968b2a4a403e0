import os
from pathlib import Path

import pytest

from model.common import REPO_ROOT as ROOT
from tests.helpers import CHROMIUM

SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    from pacs.orthanc import missing_reason

    skip_data = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA}")
    no_orthanc = missing_reason()
    skip_orthanc = pytest.mark.skip(reason=f"no local Orthanc: {no_orthanc}")
    for item in items:
        if "realdata" in item.keywords and not (SHARED_DATA / "fracatlas").is_dir():
            item.add_marker(skip_data)
        if "orthanc" in item.keywords and no_orthanc:  # tests against a live loopback Orthanc
            item.add_marker(skip_orthanc)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
        )
        yield b
        b.close()
