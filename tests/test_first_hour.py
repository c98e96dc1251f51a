"""A new user's first hour: a run needs no working torchvision, a broken one gets one clear
line, MNIST downloads by itself (through a fake torchvision: tests never reach the network),
redirected output holds no progress-bar junk, `train --help` lists the user's groups and keys,
and `resume` says what it resumes and from which step."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, TINY_ON_FILES, event_scalars, run_cli, start_cli
from torchvision.utils import make_grid

from vae_bench import cli, jobs
from vae_bench.diagnostics import image_grid
from vae_bench.preflight import config_groups
from vae_bench.tracking import OBJECTIVE_VIEW
from vae_bench.train_help import KEYS, top_level_keys

TESTS = Path(__file__).resolve().parent
LOUD = [override for override in TINY if override != "log.quiet=true"]
# A line of the log as `vae-bench train` writes it (Hydra's job log format).
def log_line(name: str) -> str:
    return r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[" + re.escape(name) + r"\]\[INFO\] - "

# A stand-in for torchvision, put first on the path of a `vae-bench` subprocess. FAKE_TORCHVISION
# says what it does: `broken` fails to import as a build for another torch does; `offline`
# fails to download; `serves` downloads a tiny MNIST.
FAKE_INIT = '''
import os
if os.environ["FAKE_TORCHVISION"] == "broken":
    raise RuntimeError("operator torchvision::nms does not exist")
'''
FAKE_DATASETS = '''
import os
from pathlib import Path


def MNIST(root, train, download):
    if os.environ["FAKE_TORCHVISION"] == "offline":
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: Tried "
                           "https://ossci-datasets.s3.amazonaws.com/mnist/, got: <urlopen error "
                           "[Errno -2] Name or service not known>")
    from datafiles import write_idx_set

    write_idx_set(Path(root), n_train=64, n_test=32, gz=True)
'''


@pytest.fixture(scope="module")
def fake_torchvision(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("fake_site")
    (site / "torchvision").mkdir()
    (site / "torchvision" / "__init__.py").write_text(FAKE_INIT)
    (site / "torchvision" / "datasets.py").write_text(FAKE_DATASETS)
    info = site / "torchvision-0.28.0.dist-info"  # what importlib.metadata reports
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    return site


def with_fake(site: Path, mode: str) -> dict[str, str]:
    path = [str(site), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(filter(None, path)), "FAKE_TORCHVISION": mode}


def only_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vae-bench: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---- install: torchvision is needed for downloads only --------------------------------------


def test_image_grid_draws_what_make_grid_draws() -> None:
    for count, channels, columns in ((32, 1, 16), (64, 3, 8), (5, 1, 8), (7, 3, 3)):
        images = torch.rand(count, channels, 6, 5)
        assert torch.equal(image_grid(images, columns), make_grid(images, nrow=columns))


@pytest.mark.slow
def test_a_training_run_never_imports_torchvision(tmp_path: Path) -> None:
    program = ("import sys\nfrom vae_bench.cli import main\ntry:\n"
               f"    main({['train', *TINY, 'hydra.run.dir=run']!r})\nfinally:\n"
               "    print('imported:', sorted(m for m in sys.modules if 'torchvision' in m))\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "imported: []" in result.stdout
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    # The TensorBoard view vae-bench points to filters the Scalars tab to the objective alone.
    tag_filter = OBJECTIVE_VIEW.split("tagFilter=", 1)[1]
    shown = {tag for tag in event_scalars(tmp_path / "run") if re.search(tag_filter, tag)}
    assert shown == {tag for tag in event_scalars(tmp_path / "run")
                     if tag.startswith(("test/", "train/"))}
    assert {"test/elbo", "train/elbo", "test/nll_iwae"} <= shown
    assert OBJECTIVE_VIEW in jobs.closing_line(tmp_path, [])  # a sweep's last lines say so


@pytest.mark.slow
def test_a_mismatched_torchvision_gets_one_line_naming_both_versions(
        tmp_path: Path, fake_torchvision: Path) -> None:
    env = with_fake(fake_torchvision, "broken")
    trained = run_cli(["train", *TINY, "hydra.run.dir=run"], cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr  # training never needed it
    (tmp_path / "empty").mkdir()
    result = run_cli(["train", *TINY_ON_FILES, "dataset=mnist", "data.root=empty",
                      "hydra.run.dir=refused"], cwd=tmp_path, env=env)
    assert result.returncode == cli.EXIT_USER_ERROR
    line = only_line(result.stderr)
    for text in ("torchvision 0.28.0", f"torch {torch.__version__}",
                 "operator torchvision::nms does not exist", "pip install --force-reinstall",
                 "torchvision==0."):
        assert text in line, (text, line)
    assert not (tmp_path / "refused").exists()


def test_the_suggested_torchvision_matches_this_torch() -> None:
    from vae_bench.data import torchvision_mismatch

    major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    message = torchvision_mismatch(RuntimeError("boom"))
    assert f"torchvision==0.{minor + 15}.*" in message  # torch 2.14 goes with torchvision 0.29
    assert major == 2


# ---- data: downloaded by default, offline refused at once -----------------------------------


@pytest.mark.slow
def test_a_fresh_machine_downloads_mnist_by_itself(tmp_path: Path,
                                                    fake_torchvision: Path) -> None:
    env = with_fake(fake_torchvision, "serves")
    env["VAE_BENCH_DATA"] = str(tmp_path / "data")  # an empty data root, as on a new machine
    result = run_cli(["train", "param=logvar", *TINY_ON_FILES, "hydra.run.dir=run"],
                     cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        f"{split}-{kind}-ubyte.gz" for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1"))
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["MNIST"]  # no staging left
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"


@pytest.mark.slow
def test_offline_the_run_is_refused_with_the_files_and_the_fixes(
        tmp_path: Path, fake_torchvision: Path) -> None:
    env = with_fake(fake_torchvision, "offline")
    env["VAE_BENCH_DATA"] = str(tmp_path / "data")
    result = run_cli(["train", "param=logvar", *TINY_ON_FILES, "hydra.run.dir=run"],
                     cwd=tmp_path, env=env)
    assert result.returncode == cli.EXIT_USER_ERROR
    line = only_line(result.stderr)
    for text in ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte",
                 "downloading it failed", "Name or service not known", "data.root=",
                 "dataset=synthetic"):
        assert text in line, (text, line)
    assert not (tmp_path / "run").exists()
    data = tmp_path / "data"
    assert not data.exists() or not any(data.iterdir())  # nothing half-downloaded stays


# ---- console: no bars in files ----------------------------------------------------------------


@pytest.mark.slow
def test_redirected_output_has_epoch_lines_and_no_bars(tmp_path: Path) -> None:
    with open(tmp_path / "out.txt", "w") as out:
        result = subprocess.run([sys.executable, "-m", "vae_bench", "train", *LOUD,
                                 "hydra.run.dir=run"], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, timeout=300,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0
    text = (tmp_path / "out.txt").read_text()
    assert "\r" not in text and "it/s" not in text
    assert re.search(log_line("vae_bench.train") + r"epoch 1/2 \| test/elbo", text)
    assert re.search(log_line("vae_bench.train") + r"epoch 2/2 \| test/elbo", text)


@pytest.mark.slow
def test_a_terminal_still_gets_the_bars(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, where tqdm draws nothing; make it 100 wide.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:  # a full pty would block the run
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal side closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        result = subprocess.run([sys.executable, "-m", "vae_bench", "train", *LOUD,
                                 "hydra.run.dir=run"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=terminal, timeout=300)
    finally:
        os.close(terminal)
        reader.join(timeout=30)
        os.close(controller)
    assert result.returncode == 0
    assert b"\r" in b"".join(chunks) and b"epoch 1/2" in b"".join(chunks)


# ---- help and resume ----------------------------------------------------------------------------


def test_train_help_lists_the_users_groups_and_every_key(capsys) -> None:
    cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert "schema/" not in text
    for group, choices in config_groups().items():
        assert re.search(rf"^  {group} +\S", text, re.MULTILINE), group
        for choice in choices:
            assert re.search(rf"\b{choice}\*?( |$)", text, re.MULTILINE), (group, choice)
    assert "mnist*" in text and "logvar*" in text  # the defaults are marked
    assert set(KEYS) == set(top_level_keys())  # a key added to the schema needs its line
    for key in top_level_keys():
        assert re.search(rf"^  {re.escape(key)} +\w", text, re.MULTILINE), key


@pytest.mark.slow
def test_resume_says_what_it_resumes_and_from_which_step(tmp_path: Path) -> None:
    first = run_cli(["train", *LOUD, "trainer.epochs=1", "hydra.run.dir=run"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    steps = json.loads((run / "summary.json").read_text())["step"]
    # As if stopped after its first epoch: two epochs asked for, one done and checkpointed.
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["trainer"]["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "summary.json").write_text(json.dumps({"status": "interrupted", "step": steps}))
    result = run_cli(["resume", "run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(log_line("vae_bench") + r"resuming run \(dataset=synthetic "
                     r"model=mlp param=logvar likelihood=bernoulli optim=adam optim.lr=0.001 "
                     r"seed=0\), 2 epochs in all", result.stdout), result.stdout
    assert re.search(log_line("vae_bench.train") + rf"run: resumed from step "
                     rf"{steps} \(epoch 1 of 2 completed\)", result.stdout), result.stdout
    assert re.search(log_line("vae_bench.train") + r"epoch 2/2 \|", result.stdout)


# ---- scripts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(p.name for p in (TESTS.parent / "scripts").iterdir()
                                          if p.is_file()))
def test_each_script_runs_by_itself_and_says_how_in_its_first_lines(script: str) -> None:
    path = TESTS.parent / "scripts" / script
    assert os.access(path, os.X_OK), f"{path} lost its run bit"
    head = path.read_text().splitlines()[:6]
    assert head[0].startswith("#!/usr/bin/env "), head[0]
    assert any(f"scripts/{script}" in line for line in head), head  # how to run it


# ---- TensorBoard's HParams row ----------------------------------------------------------------


def hparams_statuses(run_dir: Path) -> list[str]:
    """The status of every HParams row in the run folder's event files, in the order written."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    statuses = []
    for events in sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content)
                    statuses.append(data.session_start_info.hparams["status"].string_value)
    return statuses


@pytest.mark.slow
def test_a_resumed_run_has_one_hparams_row_with_its_final_status(tmp_path: Path) -> None:
    """TensorBoard shows the first row a run folder holds, so an interrupt writes none."""
    run = tmp_path / "run"
    args = [*TINY, "dataset.num_train=2048", "trainer.batch_size=8", "hydra.run.dir=run"]
    proc = start_cli(["train", *args], tmp_path)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        summary = json.loads((run / "summary.json").read_text()) \
            if (run / "summary.json").is_file() else {}
        if summary.get("epoch", 0) >= 1:  # epoch 1 checkpointed: stop it inside epoch 2
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    proc.communicate(timeout=300)
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert hparams_statuses(run) == []
    resumed = run_cli(["resume", "run"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert hparams_statuses(run) == ["completed"]
