"""Every command's --help names the command as it is run (`python -m model.predict`, never `predict.py`)."""

from __future__ import annotations

import importlib
import sys

import pytest

COMMANDS = ["model.train", "model.evaluate", "model.predict", "model.calibrate", "model.splits", "model.xray_fit",
            "scripts.eval_robustness", "scripts.eval_cam", "scripts.eval_xray_check", "scripts.bench_app",
            "scripts.bench_infer", "scripts.bench_load", "scripts.bench_pacs", "scripts.ship_model",
            "scripts.compare_calibrators", "scripts.compare_table", "scripts.dev_xray_check"]


@pytest.mark.parametrize("module", COMMANDS + ["app.__main__", "pacs.__main__"])
def test_help_shows_the_module_command(module, monkeypatch, capsys):
    mod = importlib.import_module(module)
    monkeypatch.setattr(sys, "argv", [module.rsplit(".", 1)[-1] + ".py", "--help"])
    with pytest.raises(SystemExit) as ended:
        mod.main()
    assert ended.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {module.removesuffix('.__main__')} "), out[:200]
