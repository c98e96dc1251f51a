"""The configs ship inside the wheel: a plain `pip install .` finds them from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_wheel_install_finds_the_configs(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("vae_bench", "configs", "hydra_plugins"):
        shutil.copytree(REPO / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(source)], check=True)
    (wheel,) = wheels.glob("vae_bench-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import vae_bench; print(vae_bench.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(site)  # the wheel, not the repo
    assert (site / "vae_bench" / "configs" / "param" / "natural.yaml").is_file()
    assert (site / "hydra_plugins" / "vae_bench_launcher" / "slurm_launcher.py").is_file()
    assert not (site / "hydra_plugins" / "__init__.py").exists()  # a namespace package
    result = subprocess.run([sys.executable, "-m", "vae_bench", "train", "param=natural",
                             "dataset=cifar10", "--cfg", "job"], cwd=elsewhere, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "name: natural" in result.stdout and "name: cifar10" in result.stdout
    # Hydra finds the slurm preset's launcher among the installed plugins.
    launcher = subprocess.run([sys.executable, "-c", (
        "from hydra.core.plugins import Plugins; from hydra.plugins.launcher import Launcher; "
        "print([c.__module__ for c in Plugins.instance().discover(Launcher)])")],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert "hydra_plugins.vae_bench_launcher.slurm_launcher" in launcher.stdout
