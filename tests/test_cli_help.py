"""Every command's --help names the command as it is run (`python -m model.predict`, never `predict.py`)."""

from __future__ import annotations

import importlib
import sys

import pytest

COMMANDS = ["model.train", "model.evaluate", "model.predict", "model.calibrate", "model.splits", "model.xray.fit",
            "scripts.eval_robustness", "scripts.eval_cam", "scripts.eval_xray_check", "scripts.bench_app",
            "scripts.bench_infer", "scripts.bench_load", "scripts.bench_pacs", "scripts.ship_model",
            "scripts.compare_calibrators", "scripts.compare_table", "scripts.dev_xray_check",
            "scripts.choose_cam_layer"]


@pytest.mark.parametrize("module", COMMANDS + ["app.__main__", "pacs.__main__"])
def test_help_shows_the_module_command(module, monkeypatch, capsys):
    mod = importlib.import_module(module)
    monkeypatch.setattr(sys, "argv", [module.rsplit(".", 1)[-1] + ".py", "--help"])
    with pytest.raises(SystemExit) as ended:
        mod.main()
    assert ended.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {module.removesuffix('.__main__')} "), out[:200]


def test_bundle_flag_gives_every_file_and_a_file_flag_overrides_one(tmp_path):
    import argparse

    from model.common import add_bundle_args, resolve_bundle

    ap = argparse.ArgumentParser()
    add_bundle_args(ap)
    a = resolve_bundle(ap.parse_args(["--bundle", str(tmp_path), "--calibration", "site.json"]))
    assert (a.model, a.calibration, a.xray_check) == (str(tmp_path / "model.pt"), "site.json",
                                                      str(tmp_path / "xray_check.npz"))
    d = resolve_bundle(ap.parse_args([]))
    from model.common import DEFAULT_CALIBRATION, DEFAULT_MODEL, DEFAULT_XRAY_CHECK

    assert (d.model, d.calibration, d.xray_check) == (str(DEFAULT_MODEL), str(DEFAULT_CALIBRATION),
                                                      str(DEFAULT_XRAY_CHECK))


@pytest.mark.parametrize("command", [["model.predict", "x.png"], ["app"], ["pacs", "scan", "--url", "http://127.0.0.1:9"]])
def test_every_serving_command_reads_its_bundle(command, tmp_path):
    """--bundle DIR: the model is looked for in DIR (here empty, so the command says so and stops)."""
    import subprocess

    from model.common import REPO_ROOT

    env_free = [sys.executable, "-m", *command, "--bundle", str(tmp_path)]
    if command[0] == "app":
        env_free += ["--port", "0"]
    out = subprocess.run(env_free, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    if command[0] != "pacs":  # pacs scan checks the server first (unreachable here)
        assert str(tmp_path / "model.pt") in text, text
