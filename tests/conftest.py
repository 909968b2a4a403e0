import os
from pathlib import Path

import pytest

from model.common import REPO_ROOT as ROOT

SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    skip_data = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA}")
    for item in items:
        if "realdata" in item.keywords and not (SHARED_DATA / "fracatlas").is_dir():
            item.add_marker(skip_data)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA
