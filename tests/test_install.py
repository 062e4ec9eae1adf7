"""A non-editable install (`pip install .`) carries every file the presets and the default training
config need: each preset simulates from the installed copy, away from the checkout.

The checkout's files (tracked or not ignored, as a clean clone would have them: no stale `build/`
to fill the gaps) are copied away and installed, without dependencies (the test's environment has
them), into a temporary folder. That folder goes first on `sys.path` of a fresh interpreter whose
working directory is outside the checkout, and the run checks `envs` was imported from there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envs.scenarios import preset_names

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import envs
from envs.scenarios import load_scenario, preset_names, run_scenario
from eval.cli import main
from training.config import load_train_config

report = {"envs_file": envs.__file__, "presets": preset_names(), "rc": {}}
for name in preset_names():
    report["rc"][name] = main(["simulate", name, "--duration-s", "2", "--json"])
report["train_config_seed"] = load_train_config(None).seed
print("REPORT " + json.dumps(report))
"""


def clean_copy(destination: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():  # a deleted but still tracked file is listed too
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = clean_copy(tmp_path_factory.mktemp("source"))
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return target


@pytest.mark.slow
def test_every_preset_runs_from_a_non_editable_install(installed: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(installed)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("REPORT "))[7:])
    assert Path(report["envs_file"]).resolve().is_relative_to(installed.resolve()), report["envs_file"]
    assert report["presets"] == preset_names()  # every preset file went into the install
    assert report["rc"] == dict.fromkeys(preset_names(), 0), done.stderr[-3000:]
    assert report["train_config_seed"] >= 0  # the packaged default training config loads
