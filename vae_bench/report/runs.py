"""Reading run folders: find them, load config/overrides/summary/metrics, name their variant and
group, and set aside a second run of the same config and seed."""

from __future__ import annotations

import json
import lzma
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vae_bench.tracking import process_gone

NO_SUMMARY = "no_summary"
KILLED = "killed"  # summary.json says running, but its process is gone
STATUS_ORDER = ("completed", "diverged", "failed", "interrupted", KILLED, "running", NO_SUMMARY)
# The keys train.yaml keeps out of job folder names, should train.yaml not be readable.
FALLBACK_EXCLUDE_KEYS = ("experiment", "data.root", "data.download", "trainer.device",
                         "trainer.threads", "log.quiet", "hydra.launcher", "hydra/launcher")
# Config keys that never make two runs different experiments.
IGNORED_CONFIG_PREFIXES = ("seed", "data.", "trainer.device", "trainer.threads", "log.quiet")
# Overrides that change no value a variant is compared on: eval.iwae_k_final only adds its own
# tag, test/nll_iwae_final, after training. A study may give it a larger k for some seeds than
# for others (experiment=long_horizon), and those seeds still pair as one variant.
NOT_A_VARIANT_KEY = {"eval.iwae_k_final"}


class ReportError(ValueError):
    """Bad input to the report: a missing folder, no runs, a malformed option."""


@dataclass
class Run:
    path: Path
    sweep: Path
    status: str
    config: dict  # flattened: {"param.name": "logstd", "optim.lr": 0.001, ...}
    overrides: list[str]
    summary: dict
    variant: tuple[str, ...] = ()  # sorted "key=value" items that define the variant
    group: tuple[str, ...] = ()
    duplicate_of: Run | None = None  # an earlier run of the same config and seed
    _records: list[dict] | None = field(default=None, repr=False)

    @property
    def seed(self):
        return self.config.get("seed", override_value(self.overrides, "seed"))

    @property
    def name(self) -> str:
        relative = self.path.relative_to(self.sweep).as_posix()
        return self.sweep.name if relative == "." else f"{self.sweep.name}/{relative}"

    def records(self) -> list[dict]:
        if self._records is None:
            self._records = read_records(self.path / "metrics.jsonl")
        return self._records

    def final(self, tag: str) -> float | None:
        return as_float(self.summary.get(tag))


def as_float(value) -> float | None:
    """A finite float, or None (summary.json writes NaN/Inf as strings)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_records(path: Path) -> list[dict]:
    """metrics.jsonl, tolerating a last line cut short by a killed process; or, in a run's
    record (scripts/study_records.py), its compressed copy metrics.jsonl.xz."""
    packed = path.with_name(path.name + ".xz")
    if path.is_file():
        text = path.read_text()
    elif packed.is_file():
        text = lzma.decompress(packed.read_bytes()).decode()
    else:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def epoch_curve(run: Run, tag: str = "test/elbo") -> dict[int, float]:
    curve = {}
    for record in run.records():
        value = as_float(record.get(tag))
        if value is not None and record.get("epoch") is not None:
            curve[int(record["epoch"])] = value
    return curve


def step_curve(run: Run, tag: str) -> dict[int, float]:
    curve = {}
    for record in run.records():
        value = as_float(record.get(tag))
        if value is not None:
            curve[int(record["step"])] = value
    return curve


def flatten(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix: node} if prefix else {}
    flat = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict)
                    else {f"{prefix}{key}": value})
    return flat


def load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def is_run_folder(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / ".hydra").is_dir()


def find_run_folders(root: Path) -> list[Path]:
    """Run folders under root (root itself may be one); a run folder is not searched further,
    so its .hydra/ and checkpoints/ are never mistaken for runs."""
    if is_run_folder(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here != root and is_run_folder(here):
            found.append(here)
            dirnames.clear()
            continue
        # .hydra and .submitit hold Hydra's and submitit's own files, never runs.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


def split_override(line: str) -> tuple[str, str]:
    key, _, value = line.partition("=")
    return key.lstrip("+~"), value


def override_group(key: str) -> str:
    return key.split("@", 1)[0]


def override_value(overrides: list[str], key: str):
    for line in overrides:
        name, value = split_override(line)
        if name == key:
            return yaml.safe_load(value) if value else value
    return None


def load_run(path: Path, sweep: Path) -> Run:
    config = load_yaml(path / "config.yaml")
    if not isinstance(config, dict):
        config = load_yaml(path / ".hydra" / "config.yaml")
    overrides = load_yaml(path / ".hydra" / "overrides.yaml")
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            summary = None
    status = summary.get("status", "unknown") if isinstance(summary, dict) else NO_SUMMARY
    if status == "running" and process_gone(summary):
        status = KILLED
    return Run(path=path, sweep=sweep, status=status,
               config=flatten(config) if isinstance(config, dict) else {},
               overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
               summary=summary if isinstance(summary, dict) else {})


def excluded_override_keys() -> set[str]:
    """Override keys that say where or how loudly a job ran: train.yaml's list of keys kept out
    of job folder names. (A run's own .hydra/hydra.yaml is no guide: `vae-bench train -m` also
    leaves the overrides every job shares out of folder names.)

    `experiment` is taken back in: it is out of folder names because the sweep folder already
    tells which preset ran, but a preset does change what a run computes. NOT_A_VARIANT_KEY is
    added.
    """
    from vae_bench.config import config_dir

    train_yaml = load_yaml(config_dir() / "train.yaml")
    try:
        keys = train_yaml["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    except (TypeError, KeyError):
        keys = None
    keys = set(keys if isinstance(keys, list) else FALLBACK_EXCLUDE_KEYS)
    return (keys - {"experiment"}) | NOT_A_VARIANT_KEY


def variant_of(overrides: list[str], excluded: set[str]) -> tuple[str, ...]:
    items = []
    for line in overrides:
        key, value = split_override(line)
        group = override_group(key)
        if key == "seed" or group in excluded or group.startswith(("hydra.", "hydra/")):
            continue
        items.append(f"{key}={value}")
    return tuple(sorted(items))


def config_choice(config: dict, key: str):
    """`dataset` -> config["dataset.name"]; any other key is read as is."""
    return config.get(f"{key}.name", config.get(key))


def comparable_config(config: dict, ignore: Sequence[str] = ()) -> dict:
    ignore = tuple(ignore)
    return {k: v for k, v in config.items()
            if not k.startswith(IGNORED_CONFIG_PREFIXES) and k not in ignore}


def none_as_unknown(value) -> object:
    return "?" if value is None else value


def load_runs(folders: Sequence[Path], group_by: Sequence[str]) -> list[Run]:
    excluded = excluded_override_keys()
    runs, seen = [], set()
    for folder in folders:
        for path in find_run_folders(folder):
            if path.resolve() in seen:  # a folder passed twice, or inside another one passed
                continue
            seen.add(path.resolve())
            run = load_run(path, folder)
            run.variant = variant_of(run.overrides, excluded)
            run.group = tuple(f"{key}={none_as_unknown(config_choice(run.config, key))}"
                              for key in group_by)
            runs.append(run)
    mark_duplicates(runs)
    return runs


def mark_duplicates(runs: list[Run]) -> None:
    """A second run of the same config and seed (`vae-bench train param=logstd seed=0` twice
    under outputs/runs) is the same measurement again, not another seed: the first one by folder
    path (for outputs/runs/<date>/<time>, the earliest) counts, later ones are set aside.
    Runs without a readable config cannot be told apart and are all kept."""
    first: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: str(r.path)):
        if not run.config:
            continue
        key = json.dumps([run.variant, str(run.seed), comparable_config(run.config)],
                         sort_keys=True, default=str)
        if key in first:
            run.duplicate_of = first[key]
        else:
            first[key] = run


def counted(runs: Sequence[Run]) -> list[Run]:
    """The runs statistics are made of: every run but the duplicates set aside."""
    return [run for run in runs if run.duplicate_of is None]
