"""`vae-bench <command>`: train (a Hydra app), resume, report.

The train subcommand hands every argument after `train` to Hydra unchanged, so overrides,
`-m/--multirun`, `--cfg job` and `--help` behave as in any Hydra app.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.plugins.sweeper import Sweeper
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vae_bench import checkpoints, jobs
from vae_bench.checkpoints import CheckpointError
from vae_bench.config import (
    config_differences,
    config_dir,
    data_root,
    load_run_config,
    register_configs,
)
from vae_bench.errors import USER_ERRORS, record_failure
from vae_bench.tracking import process_gone
from vae_bench.validation import validate

USAGE = """usage: vae-bench <command> [args]

commands:
  train [overrides] [-m]     train one VAE (a Hydra app: `vae-bench train --help` lists the
                             config groups, `-m a=x,y` sweeps)
  resume <run folder>        continue an interrupted run from its last checkpoint
  report <folder> [...]      compare the runs of one or more sweeps (report.md, report.csv, PNGs)

examples:
  vae-bench train param=logvar
  vae-bench train -m param=logvar,logstd,softplus_std seed=0,1,2
  tensorboard --logdir outputs/sweeps
  vae-bench report outputs/sweeps/<date_time>
"""

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

log = logging.getLogger("vae_bench")


def job_name(override_dirname: str, job_number: int) -> str:
    """Multirun job folders are named by their overrides, e.g. `param=logstd,seed=1`."""
    return override_dirname or f"job{job_number}"


OmegaConf.register_new_resolver("vae_bench_job_name", job_name, replace=True)
register_configs()


def fail(error: BaseException) -> None:
    """Bad input: one paragraph on stderr and exit 2; a traceback only with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"vae-bench: error: {error}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def unwritable(run_dir: Path, reason: str) -> PermissionError:
    return PermissionError(f"The output folder {run_dir} is not writable ({reason}). "
                           "Choose another with `hydra.run.dir=…` (single runs) or "
                           "`hydra.sweep.dir=…` (sweeps).")


def check_writable(run_dir: Path) -> None:
    probe = run_dir / ".write_test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise unwritable(run_dir, error.strerror) from None


def check_creatable(run_dir: Path) -> None:
    """Whether `run_dir` can be created and written, creating nothing that stays behind."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise unwritable(run_dir, f"{existing} is a file, not a folder")
    try:  # a real write: permission bits do not stop root, but /proc or a read-only mount do
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise unwritable(run_dir, f"cannot create anything in {existing}: {error.strerror}") \
            from None


class OutputDirCheck(Callback):
    """Checks the output folder before Hydra creates it: Hydra's own mkdir would end the run
    with a traceback instead of a message."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "sweep")

    @staticmethod
    def _check(config: DictConfig, mode: str) -> None:
        try:
            folder = Path(os.path.abspath(str(config.hydra[mode].dir)))
        except Exception:  # not resolvable yet (e.g. ${hydra:...}): Hydra reports it itself
            return
        try:
            check_creatable(folder)
        except PermissionError as error:
            fail(error)


OUTPUT_DIR_CHECK = "+hydra.callbacks.vae_bench_output_dir._target_=vae_bench.cli.OutputDirCheck"
SWEEP_PROGRESS = "+hydra.callbacks.vae_bench_sweep._target_=vae_bench.jobs.SweepProgress"


def add_override(argv: list[str], override: str) -> list[str]:
    """Hydra's parser takes overrides only as one contiguous block (`a=1 --cfg job b=2` is an
    error), so an added override joins the block where there is one."""
    first = next((i for i, arg in enumerate(argv) if "=" in arg and not arg.startswith("-")),
                 len(argv))
    return [*argv[:first], override, *argv[first:]]


def quiet_console() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler,
                                                                         logging.FileHandler):
            handler.setLevel(logging.WARNING)


def finish(summary: dict, multirun: bool) -> None:
    """A single run that diverged or was interrupted exits non-zero; a sweep goes on."""
    status = summary["status"]
    if multirun or status == "completed":
        return
    if status == "diverged":
        print(f"vae-bench: run diverged at step {summary.get('diverged_step')} "
              f"(epoch {summary.get('diverged_epoch')}); see summary.json", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    if status == "interrupted":
        sys.exit(EXIT_INTERRUPTED)


class EarlierRunKept(Exception):
    """A job's folder holds a run that this job must not overwrite."""


def earlier_attempt(cfg: DictConfig, run_dir: Path) -> tuple[str | None, dict]:
    """What an earlier attempt left in this job's folder, when a sweep is run again into the
    same `hydra.sweep.dir`, and its summary: "done" (completed or diverged: skip it), "resume"
    (interrupted, killed or crashed, with a checkpoint), "start over" (the same, but it never
    reached a checkpoint: what it logged is dropped), or None (nothing, or only a config error:
    train).

    Anything else is refused with a message rather than overwritten: a run still in progress,
    or one whose config differs from this job's."""
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        return None, {}
    summary = json.loads(summary_file.read_text())
    status = summary.get("status")
    has_checkpoint = checkpoints.exists(run_dir)
    if status in ("completed", "diverged"):
        # Skipped only when it is this job's run: a study whose budget changed must not keep
        # the old budget's runs silently (they are restored from records too).
        differing = differences_from_saved(cfg, run_dir)
        if differing == ["data.root"] and same_data(cfg, summary):
            differing = []  # the same files elsewhere: records restored on another machine
        if differing:
            raise EarlierRunKept(f"{run_dir} holds a {status} run of another config (it differs "
                                 f"in {listed(differing)}); "
                                 "sweep into another folder with `hydra.sweep.dir=…`, or delete "
                                 "that folder to train the job again.")
        return "done", summary
    if status == "failed" and not has_checkpoint and not (run_dir / "metrics.jsonl").exists():
        return None, summary  # refused before training (a bad config): nothing to keep
    if status == "running" and not process_gone(summary):
        raise EarlierRunKept(f"{run_dir} holds a run that is still `running` (pid "
                             f"{summary.get('pid')} on {summary.get('host')}); leave it, or "
                             "sweep into another folder with `hydra.sweep.dir=…`.")
    if status not in ("interrupted", "running", "killed", "failed"):
        raise EarlierRunKept(f"{run_dir} holds a run with status {status!r}; delete that "
                             "folder to train the job again.")
    differing = differences_from_saved(cfg, run_dir)
    if differing:
        raise EarlierRunKept(f"{run_dir} holds an unfinished run of another config (it differs "
                             f"in {listed(differing)}); sweep into another folder with "
                             "`hydra.sweep.dir=…`, or continue that run with "
                             f"`vae-bench resume {run_dir}`.")
    return ("resume" if has_checkpoint else "start over"), summary


def differences_from_saved(cfg: DictConfig, run_dir: Path) -> list[str]:
    """The keys in which the run saved in run_dir differs from this job's config."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return ["(its config.yaml is missing)"]
    return config_differences(OmegaConf.load(saved_file), cfg)


def same_data(cfg: DictConfig, summary: dict) -> bool:
    """Whether a finished run read the data set this job would read, by the label its summary
    recorded (CIFAR-10 copies are told apart by their checksums)."""
    from vae_bench.data import dataset_label

    recorded = summary.get("data/label")
    return recorded is not None and recorded == dataset_label(cfg.dataset.name, data_root(cfg))


def listed(keys: list[str], most: int = 5) -> str:
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def train_task(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    summary = run_job(cfg, run_dir, multirun)
    if multirun:
        jobs.record_job(Path(hydra_cfg.sweep.dir), run_dir, summary)
    else:  # printed, not logged: the one line a quiet run still needs
        print(f"vae-bench: run folder: {run_dir}", flush=True)
        finish(summary, multirun)
    return summary.get("test/elbo")


def run_job(cfg: DictConfig, run_dir: Path, multirun: bool) -> dict:
    """Train one run (a sweep's job in a child process: see jobs.py) and return its summary; a
    sweep job never raises, so that it never ends the sweep."""
    from vae_bench.preflight import check_runnable

    try:
        check_runnable(cfg)  # again: a sweep's jobs are checked here, each on its own
        check_writable(run_dir)
        if cfg.log.quiet:
            quiet_console()
        attempt, earlier = earlier_attempt(cfg, run_dir) if multirun else (None, {})
        if attempt == "done":
            # Warning level: quiet sweeps show it too, and a skipped job should never surprise.
            log.warning("%s: already %s, skipped", run_dir, earlier["status"])
            return {**earlier, "skipped": True}
        if attempt is None:
            save_resolved_config(cfg, run_dir)
        if attempt in ("resume", "start over"):
            log.warning("%s: its earlier attempt ended %s; %s", run_dir, earlier["status"],
                        "continuing from its last checkpoint" if attempt == "resume" else
                        "it never reached a checkpoint, so training starts over")
        log.info("run folder: %s", run_dir)
        if multirun:  # the launcher's process never imports the training code
            return jobs.train_in_child(run_dir, attempt, quiet=cfg.log.quiet)
        from vae_bench.train import train

        return train(cfg, run_dir, quiet=cfg.log.quiet)
    except EarlierRunKept as error:  # leave that run's folder as it is
        log.error("vae-bench: error: %s", error)
        return {"status": jobs.KEPT, "error": str(error)}
    except USER_ERRORS as error:
        if multirun:  # one bad job must not end the sweep: record it where the report looks
            log.error("vae-bench: error: %s", error)
            record_failure(run_dir, error)
            return {"status": "failed", "error": str(error)}
        fail(error)


def save_resolved_config(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)


def name_by_swept_keys(argv: list[str]) -> list[str]:
    """In a multirun, name job folders by the swept overrides only (`param=logstd,seed=1`):
    overrides shared by every job would only lengthen every name, and they are recorded in each
    run's .hydra/overrides.yaml and config.yaml anyway."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not {"-m", "--multirun"} & set(argv):
        return argv
    candidates = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # let Hydra report malformed overrides in its own words
        return argv
    constant = [o.get_key_element() for o in overrides
                if not o.is_sweep_override() and not o.get_key_element().startswith("hydra")]
    if not constant or any(a.startswith("hydra.job.config.override_dirname") for a in argv):
        return argv
    train_yaml = OmegaConf.load(config_dir() / "train.yaml")
    excluded = list(train_yaml.hydra.job.config.override_dirname.exclude_keys) + constant
    return add_override(
        argv, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]")


def check_before_hydra(argv: list[str]) -> None:
    """Every mistake on the command line, and for a single run its range, device and data, is
    refused here with exit 2: Hydra would exit 1 with its own words, or create the run folder
    before the task could refuse it."""
    from vae_bench.preflight import check_command_line, check_runnable

    try:
        cfg = check_command_line(argv)
        if cfg is not None:
            check_runnable(cfg)
    except USER_ERRORS as error:
        fail(error)


@contextmanager
def composing_each_job_once() -> Iterator[None]:
    """Hydra's sweepers compose every job's config before the first job runs, only to fail
    early, and the launcher composes each again to run it: for lr_stability's 882 jobs,
    minutes before the first one starts. check_before_hydra has refused every mistake on the
    command line already, so vae-bench leaves the first composition out. (Patched on the base
    class: Hydra loads its own sweeper classes apart from any import of them.)"""
    original = Sweeper.validate_batch_is_legal
    Sweeper.validate_batch_is_legal = lambda self, batch: None
    try:
        yield
    finally:
        Sweeper.validate_batch_is_legal = original


def hydra_train(argv: list[str]) -> None:
    if {"--help", "-h"} & set(argv):  # the user's groups and keys, not Hydra's schema/* groups
        from vae_bench.train_help import train_help

        print(train_help())
        return
    check_before_hydra(argv)
    decorated = hydra.main(config_path=str(config_dir()), config_name="train",
                           version_base="1.3")(train_task)
    # Added in this order, the folder check runs before the sweep folder is announced.
    argv = add_override(add_override(name_by_swept_keys(argv), SWEEP_PROGRESS), OUTPUT_DIR_CHECK)
    sys.argv = ["vae-bench train", *argv]
    with composing_each_job_once():
        decorated()


def run_description(cfg: DictConfig) -> str:
    """What a run trains, in the words of its overrides: `dataset=mnist param=logstd seed=1`."""
    choices = [f"{group}={cfg[group].name}" for group in ("dataset", "model", "param",
                                                          "likelihood", "optim")]
    return " ".join([*choices, f"optim.lr={cfg.optim.lr:g}", f"seed={cfg.seed}"])


def resume(argv: list[str]) -> None:
    from vae_bench.train import train

    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: vae-bench resume <run folder>", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    run_dir = Path(argv[0])
    config_file = run_dir / "config.yaml"
    try:
        if not config_file.is_file():
            raise CheckpointError(f"{run_dir} is not a vae-bench run folder: it has no "
                                  "config.yaml. Pass the folder of one run (it holds config.yaml, "
                                  "summary.json and checkpoints/), not a sweep folder.")
        summary_file = run_dir / "summary.json"
        if summary_file.is_file():
            status = json.loads(summary_file.read_text()).get("status")
            if status in ("completed", "diverged"):
                print(f"vae-bench: {run_dir} has status {status!r}; nothing to resume.")
                return
        cfg = load_run_config(config_file)
        validate(cfg)
        check_writable(run_dir)
        # train's own format (Hydra's job log), on stdout as train's console lines are.
        logging.basicConfig(level=logging.INFO, format=jobs.LOG_FORMAT,
                            handlers=[logging.StreamHandler(sys.stdout),
                                      logging.FileHandler(run_dir / "train.log")])
        if cfg.log.quiet:
            quiet_console()
        log.info("resuming %s (%s), %s epochs in all, from its last checkpoint", run_dir,
                 run_description(cfg), cfg.trainer.epochs)
        summary = train(cfg, run_dir, resume=True, quiet=cfg.log.quiet)
    except USER_ERRORS as error:
        fail(error)
    print(f"vae-bench: run folder: {run_dir}", flush=True)
    finish(summary, multirun=False)


def expose_launcher_plugin() -> None:
    """Let Hydra's plugin scan find vae-bench's launchers (`local`, the default, and `slurm`)
    in a source checkout.

    Hydra finds launchers by walking the folders of the `hydra_plugins` namespace package. A
    wheel puts vae-bench's in site-packages/hydra_plugins, where the walk finds it; an editable
    install (`pip install -e .`) only maps it by an import hook, which the walk does not see
    ("Unknown plugin class"). Appending the checkout's root to sys.path (last, so it shadows
    nothing installed) adds its hydra_plugins folder to the namespace."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "hydra_plugins" / "vae_bench_launcher").is_dir() \
            and str(checkout) not in sys.path:
        sys.path.append(str(checkout))


# On import, not only in main(): Hydra scans its plugins once per process, at its first use,
# which in a program (or test session) that imports vae_bench.cli may come before main().
expose_launcher_plugin()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        hydra_train(rest)
    elif command == "resume":
        resume(rest)
    elif command == "report":
        from vae_bench.report import main as report_main

        report_main(rest)
    else:
        print(f"vae-bench: unknown command {command!r}; choose train, resume or report.\n",
              file=sys.stderr)
        print(USAGE, file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
