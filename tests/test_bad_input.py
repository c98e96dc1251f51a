"""Bad input: every case ends with a short message naming the bad value and what is allowed,
without a Python traceback and before anything is trained (no checkpoint, no event file).

Every command line runs in a child process of its own, all of them together once per module,
and each test checks its own case. A fresh interpreter spends seconds of CPU importing torch, so
most cases run in a child forked from this (already importing) process that calls the same
`vae_bench.cli.main` as the `vae-bench` script; the cases in REAL_SUBPROCESS run the installed
entry point in a fresh interpreter, so that path is covered as well.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from datafiles import IMAGE_MAGIC, LABEL_MAGIC, idx_bytes, write_file, write_idx_set
from omegaconf import OmegaConf

import vae_bench.train  # noqa: F401  (imported once here, before the forks, not in each child)
from vae_bench.cli import main as cli_main
from vae_bench.config import ConfigError
from vae_bench.parameterizations import SIGMA_MAPS
from vae_bench.validation import validate

SYNTHETIC = ["dataset=synthetic", "dataset.num_train=64", "dataset.num_test=32",
             "eval.iwae_k=5", "trainer.threads=1"]
EXIT_USER_ERROR = 2

# One out-of-range value per case, and the words the message must hold for it.
RANGE_CASES = {
    "optim.lr=0": "optim.lr=0.0 must be > 0",
    "optim.lr=-0.001": "optim.lr=-0.001 must be > 0",
    "trainer.batch_size=0": "trainer.batch_size=0 must be >= 1",
    "trainer.epochs=0": "trainer.epochs=0 must be >= 1",
    "param.floor=0": "param.floor=0.0 must be > 0",
    "likelihood.floor=-1": "likelihood.floor=-1.0 must be > 0",
    "likelihood.sigma_min=2.0": "likelihood.sigma_min=2.0 must be < likelihood.sigma_max=2.0",
    "model.latent_dim=0": "model.latent_dim=0 must be >= 1",
    "eval.iwae_k=0": "eval.iwae_k=0 must be >= 1",
}
# The choices that have the options above: param.floor, and likelihood.floor/sigma_min.
CHOICES = ["param=softplus_std", "likelihood=gaussian_pixel"]
# All at once on one command line (one value per key): the message names every one of them.
COMBINED_RANGE_CASES = [override for override in RANGE_CASES if override != "optim.lr=-0.001"]


# ---- the cases ----------------------------------------------------------------------------------


def idx_set(root: Path, **replace: bytes) -> None:
    """A valid MNIST-format set under root/data, with some files replaced by `replace`."""
    write_idx_set(root / "data", n_train=5, n_test=3)
    for name, payload in replace.items():
        write_file(root / "data" / "MNIST" / "raw" / name, payload)


def images(n: int, side: int = 28) -> np.ndarray:
    return np.zeros((n, side, side), dtype=np.uint8)


def truncated(root: Path) -> None:
    payload = idx_bytes(images(5), IMAGE_MAGIC)
    idx_set(root, **{"train-images-idx3-ubyte": payload[:-100]})


def run_folder_with_corrupt_checkpoints(root: Path) -> None:
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = compose_config([*SYNTHETIC, "log.quiet=true"])
    OmegaConf.save(cfg, run / "config.yaml", resolve=True)
    for name in ("last.pt", "previous.pt"):
        (run / "checkpoints" / name).write_bytes(b"PK\x03\x04 cut short")


@dataclass
class Case:
    args: list[str]
    expected: list[str]  # each must appear in the output
    setup: Callable[[Path], None] = lambda root: None
    returncode: int | None = EXIT_USER_ERROR  # None: Hydra's own errors (any non-zero code)
    env: dict[str, str] = field(default_factory=dict)


CASES = {
    "unknown_choice": Case(["train", "param=logvarr"],
                           ["param=logvarr", "did you mean `param=logvar`?", *SIGMA_MAPS]),
    "ill_typed": Case(["train", *SYNTHETIC, "trainer.epochs=abc"],
                      ["trainer.epochs=abc", "must be a whole number", "`trainer.epochs=10`"]),
    "unknown_key_with_plus": Case(["train", *SYNTHETIC, "+trainer.epoch=3"],
                                  ["trainer.epoch", "did you mean `trainer.epochs`?",
                                   "`trainer.epochs=3`"]),
    "out_of_range": Case(["train", *SYNTHETIC, *CHOICES, *COMBINED_RANGE_CASES,
                                 "hydra.run.dir=run"],
                         [RANGE_CASES[override] for override in COMBINED_RANGE_CASES]),
    # data.download=false: tests never reach the network (test_first_hour.py fakes a download).
    "data_missing": Case(["train", "dataset=mnist", "data.root=data", "data.download=false",
                          "hydra.run.dir=run"],
                         ["not found", "MNIST/raw/train-images-idx3-ubyte", "data.root=",
                          "dataset=synthetic"],
                         setup=lambda root: (root / "data").mkdir()),
    "two_modes": Case(["train", "-m", "--cfg", "job", *SYNTHETIC],
                      ["--multirun and --cfg cannot go together", "vae-bench train --cfg job"]),
    "unknown_choice_in_a_sweep": Case(["train", "-m", *SYNTHETIC, "param=logvar,log_var"],
                                      ["param=log_var", "did you mean `param=logvar`?"]),
    "data_truncated": Case(["train", "dataset=mnist", "data.root=data", "hydra.run.dir=run"],
                           ["train-images-idx3-ubyte", "3820 data bytes after the header",
                            "expected 3920"], setup=truncated),
    "data_wrong_magic": Case(
        ["train", "dataset=mnist", "data.root=data", "hydra.run.dir=run"],
        ["t10k-images-idx3-ubyte", f"magic number {LABEL_MAGIC}", f"expected {IMAGE_MAGIC}"],
        setup=lambda root: idx_set(root, **{
            "t10k-images-idx3-ubyte": idx_bytes(images(3), LABEL_MAGIC)})),
    "data_wrong_shape": Case(
        ["train", "dataset=mnist", "data.root=data", "hydra.run.dir=run"],
        ["train-images-idx3-ubyte", "images of 27x27", "expected 28x28"],
        setup=lambda root: idx_set(root, **{
            "train-images-idx3-ubyte": idx_bytes(images(5, side=27), IMAGE_MAGIC)})),
    "data_wrong_count": Case(
        ["train", "dataset=mnist", "data.root=data", "hydra.run.dir=run"],
        ["train-labels-idx1-ubyte", "found 4 labels", "expected 5"],
        setup=lambda root: idx_set(root, **{
            "train-labels-idx1-ubyte": idx_bytes(np.zeros(4, np.uint8), LABEL_MAGIC)})),
    "run_dir_under_a_file": Case(
        ["train", *SYNTHETIC, "hydra.run.dir=a_file/run"],
        ["a_file/run", "is not writable", "a_file is a file, not a folder", "hydra.run.dir="],
        setup=lambda root: (root / "a_file").write_text("not a folder")),
    "sweep_dir_in_proc": Case(
        ["train", "-m", *SYNTHETIC, "seed=0,1", "hydra.sweep.dir=/proc/vae-bench-sweep"],
        ["/proc/vae-bench-sweep", "is not writable", "hydra.sweep.dir="]),
    "resume_not_a_run": Case(["resume", "not_a_run"],
                             ["not_a_run is not a vae-bench run folder", "config.yaml"],
                             setup=lambda root: (root / "not_a_run").mkdir()),
    "resume_corrupt_checkpoints": Case(
        ["resume", "run"], ["No usable checkpoint", "last.pt: unreadable",
                            "previous.pt: unreadable", "vae-bench train"],
        setup=run_folder_with_corrupt_checkpoints),
    "full_error_shows_the_traceback": Case(
        ["train", *SYNTHETIC, "optim.lr=0", "hydra.run.dir=run"], ["Traceback", "ConfigError"],
        returncode=None, env={"HYDRA_FULL_ERROR": "1"}),
}


REAL_SUBPROCESS = ("out_of_range", "data_truncated", "unknown_choice")


def case_env(case: Case) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **case.env}
    if "HYDRA_FULL_ERROR" not in case.env:
        env.pop("HYDRA_FULL_ERROR", None)
    return env


def fork_cli(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, Path, Path]:
    """`vae-bench <args>` in a forked child; returns its pid and the files of its output."""
    stdout, stderr = cwd / ".stdout", cwd / ".stderr"
    pid = os.fork()
    if pid:
        return pid, stdout, stderr
    code = 1
    try:  # the child: the state a fresh `vae-bench` process would start from, then main()
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        for fd, path in ((1, stdout), (2, stderr)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
        root = logging.getLogger()
        root.handlers.clear()  # pytest's capture handlers; a fresh process has none
        root.setLevel(logging.WARNING)
        torch.set_num_threads(1)  # OpenMP is not fork-safe: as DataLoader workers do
        cli_main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()  # what the interpreter would print for an uncaught exception
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    folder = tmp_path_factory.mktemp("bad_input")
    real, forked = {}, {}
    for name, case in CASES.items():
        root = folder / name
        root.mkdir()
        case.setup(root)
        if name in REAL_SUBPROCESS:
            real[name] = subprocess.Popen([sys.executable, "-m", "vae_bench", *case.args],
                                          cwd=root, env=case_env(case), text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            forked[name] = fork_cli(case.args, root, case_env(case))
    done = {}
    for name, (pid, stdout, stderr) in forked.items():
        _, status = os.waitpid(pid, 0)
        done[name] = subprocess.CompletedProcess(
            CASES[name].args, os.waitstatus_to_exitcode(status), stdout.read_text(),
            stderr.read_text())
        stdout.unlink()
        stderr.unlink()
    for name, proc in real.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(CASES[name].args, proc.returncode, out, err)
    return {name: (folder / name, done[name]) for name in CASES}


REFUSED_BEFORE_THE_RUN_FOLDER = ("unknown_choice", "ill_typed", "unknown_key_with_plus",
                                 "out_of_range", "data_missing", "unknown_choice_in_a_sweep")
CREATED_BY_SETUP = {"data_missing": ["data"]}


# ---- the checks ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CASES if n != "full_error_shows_the_traceback"])
def test_bad_input_gets_a_clear_message_and_trains_nothing(results, name: str) -> None:
    root, result = results[name]
    case = CASES[name]
    output = result.stdout + result.stderr
    if name in REFUSED_BEFORE_THE_RUN_FOLDER:  # nothing that `vae-bench report` would list
        assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) \
            == sorted(CREATED_BY_SETUP.get(name, [])), output
    if case.returncode is None:
        assert result.returncode != 0, output
    else:
        assert result.returncode == case.returncode, output
        # Our own message is one paragraph, the last thing on stderr; at most a few warning
        # lines (unreadable checkpoints) come before it.
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("vae-bench: error: ")
        assert len(lines) <= 3, result.stderr
    assert "Traceback" not in output
    for text in case.expected:
        assert text in output, (text, output)
    assert not list(root.rglob("events.out.tfevents*"))
    assert not list(root.rglob("summary.json"))
    if name != "resume_corrupt_checkpoints":  # that case brings its own (corrupt) ones
        assert not list(root.rglob("*.pt"))


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(results) -> None:
    _, result = results["full_error_shows_the_traceback"]
    assert result.returncode != 0
    for text in CASES["full_error_shows_the_traceback"].expected:
        assert text in result.stderr


@pytest.mark.slow
def test_bad_output_folders_are_left_as_they_were(results) -> None:
    root, _ = results["run_dir_under_a_file"]
    assert (root / "a_file").read_text() == "not a folder"
    assert sorted(p.name for p in root.iterdir()) == ["a_file"]
    assert not Path("/proc/vae-bench-sweep").exists()


@pytest.mark.parametrize("override", list(RANGE_CASES))
def test_each_out_of_range_value_is_refused_on_its_own(override: str) -> None:
    cfg = compose_config([*SYNTHETIC, *CHOICES, override])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert RANGE_CASES[override] in message
    assert message.count(" must be ") == 1  # only the value at fault is named


def test_defaults_pass_validation() -> None:
    validate(compose_config(SYNTHETIC))


def test_unknown_scale_mode_of_a_discretized_likelihood_is_refused() -> None:
    cfg = compose_config([*SYNTHETIC, "likelihood=discretized_logistic",
                          "likelihood.scale=per_pixel"])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert "likelihood.scale='per_pixel' is not one of: pixel, shared, fixed" in str(info.value)
