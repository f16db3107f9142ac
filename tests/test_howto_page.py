"""The how-to page "Calibrate your own model" works as written: its ``bash`` and ``python`` blocks are run in order,
exactly as on the page, in a fresh folder (fast profile, a fresh cache, the ``segcal`` command of this checkout)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "book" / "calibrate_your_own_model.md"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)


def page_blocks() -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in BLOCK.finditer(PAGE.read_text())]


def test_page_has_the_steps_it_promises():
    commands = " ".join(code for kind, code in page_blocks() if kind == "bash")
    for step in ("segcal split", "segcal logits", "segcal calibrate", "segcal apply", "segcal evaluate"):
        assert step in commands


@pytest.mark.slow
def test_page_commands_run_end_to_end(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "segcal"  # the console script of this checkout, whatever is installed
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m segcal_lib.cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "SEGCAL_PROFILE": "fast", "SEGCAL_CACHE": str(tmp_path / "cache"), "SEGCAL_DEVICE": "cpu"}
    outputs = []
    for k, (kind, code) in enumerate(page_blocks()):
        cmd = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
        run = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
        assert run.returncode == 0, (f"block {k} ({kind}) failed:\n{code}\n--- stdout\n{run.stdout}\n"
                                     f"--- stderr\n{run.stderr}")
        outputs.append(run.stdout)
    table = json.loads((work / "table.json").read_text())
    assert [row["method"] for row in table["table"]] == ["uncalibrated", "ts"]
    splits = json.loads((work / "my_data" / "splits.json").read_text())["splits"]
    names = [n for members in splits.values() for n in members]
    assert len(names) == len(set(names)) == 48
    assert any("image-wise ECE" in out and "ts" in out for out in outputs)
