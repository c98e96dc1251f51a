"""Experiment presets and launchers: what each preset sweeps, and real tiny sweeps through the
joblib and submitit launchers, each followed by `vae-bench report`."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import yaml
from conftest import compose_config, event_scalars, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import vae_bench.cli  # noqa: F401  (registers the schema and the job-name resolver)
from vae_bench.config import config_dir
from vae_bench.parameterizations import SIGMA_MAPS
from vae_bench.report import expected_equivalence, flatten

# The brief's tiny settings; one thread per job since jobs run side by side, gradient norms every
# 2 steps so that the figures have more than one point, and no image grids (time).
TINY = ["dataset=synthetic", "trainer.epochs=2", "dataset.num_train=256", "dataset.num_test=128",
        "eval.iwae_k=5", "log.quiet=true", "trainer.threads=1", "log.images=false",
        "log.grad_every=2", "log.snr_window=2"]
FIGURES = ("elbo", "grad_norms", "sigma", "final")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPERIMENTS = config_dir() / "experiment"
VARIANTS = config_dir() / "variant"


def experiment(name: str) -> str:
    """`experiment=NAME` once train.yaml lists the group in its defaults, `+experiment=NAME`
    before that (Hydra refuses the other spelling in either case)."""
    defaults = yaml.safe_load((config_dir() / "train.yaml").read_text())["defaults"]
    listed = any(isinstance(d, dict) and "experiment" in d for d in defaults)
    return f"experiment={name}" if listed else f"+experiment={name}"


def compose_with_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def sweep_values(cfg, key: str) -> list[str]:
    return [v.strip() for v in str(cfg.hydra.sweeper.params[key]).split(",")]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def status_of(run_dir: Path) -> str:
    return json.loads((run_dir / "summary.json").read_text())["status"]


def report_cli(folder: Path, capsys) -> str:
    """`vae-bench report <folder>` through the CLI's own dispatcher; in-process, since the
    interpreter start and the torch import would cost more than the report itself."""
    vae_bench.cli.main(["report", str(folder)])
    return capsys.readouterr().out


def check_figures(folder: Path) -> None:
    pngs = {kind: list(folder.glob(f"{kind}_*.png")) for kind in FIGURES}
    for kind, paths in pngs.items():
        assert len(paths) == 1, (kind, paths)
        data = paths[0].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, paths[0]


# ---------------------------------------------------------------------------------------------
# What the presets sweep (composed in-process, nothing trains)


@pytest.mark.parametrize(("name", "dataset", "model", "likelihood"), [
    ("param_sweep_mnist", "mnist", "mlp", "bernoulli"),
    ("param_sweep_fashion_mnist", "fashion_mnist", "mlp", "bernoulli"),
    ("param_sweep_cifar", "cifar10", "conv", "gaussian_shared"),
    ("same_init_sigma", "mnist", "mlp", "bernoulli"),
    ("lr_stability", "mnist", "mlp", "bernoulli"),
    ("long_horizon", "binarized_mnist", "mlp_iwae", "bernoulli"),
])
def test_param_presets_sweep_every_sigma_map(name, dataset, model, likelihood) -> None:
    cfg = compose_with_hydra([experiment(name)])
    assert (cfg.dataset.name, cfg.model.name, cfg.likelihood.name) == (dataset, model, likelihood)
    # A σ-map added to the registry but not to the presets fails here.
    assert sweep_values(cfg, "param") == list(SIGMA_MAPS)
    assert sweep_values(cfg, "seed") == ["0", "1", "2"]
    if name == "same_init_sigma":
        assert cfg.model.init_sigma == 1.0


def test_lr_stability_sweeps_both_optimizers_over_a_quarter_decade_grid() -> None:
    cfg = compose_with_hydra([experiment("lr_stability")])
    assert sweep_values(cfg, "optim") == ["sgd", "adam"]
    lrs = [float(v) for v in sweep_values(cfg, "optim.lr")]
    assert lrs[0] == 1e-3 and lrs[-1] == 100.0
    steps = [math.log10(b / a) for a, b in zip(lrs[:-1], lrs[1:])]
    assert all(step == pytest.approx(0.25, abs=2e-3) for step in steps), steps
    assert (cfg.trainer.epochs, cfg.trainer.max_steps_per_epoch) == (1, 200)


def compose_variants(driver: str) -> dict[str, dict]:
    """Each variant preset the driver sweeps, composed as the sweep composes it."""
    names = sweep_values(compose_with_hydra([experiment(driver)]), "variant")
    assert all((VARIANTS / f"{n}.yaml").is_file() for n in names), names
    variants = {}
    for name in names:
        cfg = compose_with_hydra([experiment(driver), f"variant={name}"])
        container = OmegaConf.to_container(cfg, resolve=False)
        container.pop("hydra")
        variants[name] = flatten(container)
    return variants


def test_experiment_group_holds_only_studies() -> None:
    """`experiment/` lists studies (each sweeps something), `variant/` the named variants they
    sweep over; every variant belongs to a study, so `--help` lists nothing orphaned."""
    studies = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
    assert studies and all(compose_with_hydra([experiment(name)]).hydra.sweeper.params
                           for name in studies)
    swept = set()
    for name in studies:
        params = compose_with_hydra([experiment(name)]).hydra.sweeper.params
        if "variant" in params:
            swept |= set(sweep_values(compose_with_hydra([experiment(name)]), "variant"))
    assert swept == {p.stem for p in VARIANTS.glob("*.yaml")}


def test_logstd_equivalence_variants() -> None:
    variants = compose_variants("logstd_equivalence")
    knobs = ("model.sigma_head_scale", "model.sigma_head_init_scale", "optim.sigma_head_lr_mult")
    logvar = {c["optim.name"] for c in variants.values() if c["param.name"] == "logvar"}
    assert logvar == {"sgd", "adam"}
    assert all(c[k] == 1.0 for c in variants.values() if c["param.name"] == "logvar" for k in knobs)
    # What the σ-head knobs make of each logstd variant, per optimizer.
    logstd = sorted((c["optim.name"], expected_equivalence(c).split(" (")[0])
                    for c in variants.values() if c["param.name"] == "logstd")
    assert logstd == [("adam", "no"), ("adam", "yes, up to Adam's ε"),
                      ("sgd", "no"), ("sgd", "yes, exactly under SGD")]
    for config in variants.values():  # everything else is shared
        assert (config["dataset.name"], config["model.name"]) == ("mnist", "mlp")


def test_decoder_variance_variants() -> None:
    variants = compose_variants("decoder_variance")
    learned = {(c["likelihood.name"], c["likelihood.param"]) for c in variants.values()
               if c["likelihood.name"] == "gaussian_pixel"}
    assert learned == {("gaussian_pixel", name) for name in SIGMA_MAPS}
    others = sorted(c["likelihood.name"] for c in variants.values()
                    if c["likelihood.name"] != "gaussian_pixel")
    assert others == ["gaussian_fixed", "gaussian_shared"]
    assert {c["param.name"] for c in variants.values()} == {"logvar"}  # the encoder stays put


def test_decoder_variance_bounded_variants() -> None:
    variants = compose_variants("decoder_variance_bounded")
    assert {c["likelihood.name"] for c in variants.values()} == {"discretized_gaussian"}
    pixel = {c["likelihood.param"] for c in variants.values() if c["likelihood.scale"] == "pixel"}
    assert pixel == set(SIGMA_MAPS)
    assert sorted(c["likelihood.scale"] for c in variants.values()
                  if c["likelihood.scale"] != "pixel") == ["fixed", "shared"]
    assert {c["likelihood.init_sigma"] for c in variants.values()} == {None}


def test_cifar_presets_start_every_learned_sigma_x_at_the_pixel_std() -> None:
    from vae_bench.validation import validate

    encoder = compose_with_hydra([experiment("cifar_encoder")])
    assert (encoder.dataset.name, encoder.model.name) == ("cifar10", "conv")
    assert (encoder.likelihood.name, encoder.likelihood.scale) == ("discretized_gaussian", "shared")
    assert encoder.likelihood.init_sigma == 0.25
    validate(encoder)
    assert set(sweep_values(encoder, "param")) == {"logvar", "logstd", "softplus_std",
                                                    "softplus_var", "natural"}
    variants = compose_variants("cifar_decoder")
    scales = {(c["likelihood.scale"], c["likelihood.param"] if c["likelihood.scale"] == "pixel"
               else None, c["likelihood.init_sigma"]) for c in variants.values()}
    assert scales == {("pixel", "logvar", 0.25), ("pixel", "softplus_std", 0.25),
                      ("pixel", "sigmoid_bounded", 0.25), ("shared", None, 0.25),
                      ("fixed", None, None)}
    for name in variants:
        cfg = compose_with_hydra([experiment("cifar_decoder"), f"variant={name}"])
        assert (cfg.dataset.name, cfg.model.name, cfg.param.name) == ("cifar10", "conv", "logvar")
        validate(cfg)  # the fixed variant carries no init_sigma, which validate would refuse


def test_the_default_launcher_is_local_and_falls_back_where_jobs_change_folder_or_env() -> None:
    from hydra_plugins.vae_bench_launcher.local_launcher import composes_alike_in_any_thread

    cfg = compose_with_hydra([])
    assert cfg.hydra.launcher._target_.endswith("local_launcher.LocalLauncher")
    assert composes_alike_in_any_thread(cfg)
    assert not composes_alike_in_any_thread(compose_with_hydra(["hydra.job.chdir=true"]))
    assert not composes_alike_in_any_thread(compose_with_hydra(["+hydra.job.env_set.X=1"]))
    assert compose_with_hydra(["hydra/launcher=basic"]).hydra.launcher._target_.endswith(
        "basic_launcher.BasicLauncher")


def test_the_local_launcher_runs_the_jobs_hydras_basic_launcher_runs(tmp_path: Path) -> None:
    """It composes each job's config in a thread, ahead: the configs, the folders and the
    results must be those of Hydra's basic launcher, group overrides included."""
    sweep = [*TINY, "trainer.epochs=1", "param=logvar,softplus_std", "seed=0,1"]
    for name, launcher in (("local", []), ("basic", ["hydra/launcher=basic"])):
        result = run_cli(["train", "-m", *sweep, *launcher,
                          f"hydra.sweep.dir={tmp_path / name}"], tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    basic_runs = sorted(p.parent.name for p in (tmp_path / "basic").glob("*/config.yaml"))
    local_runs = sorted(p.parent.name for p in (tmp_path / "local").glob("*/config.yaml"))
    assert basic_runs == local_runs and len(basic_runs) == 4
    for name in basic_runs:
        basic, local = tmp_path / "basic" / name, tmp_path / "local" / name
        for file in ("config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml"):
            assert (local / file).read_text() == (basic / file).read_text(), (name, file)
        hydra_basic = OmegaConf.load(basic / ".hydra/hydra.yaml").hydra
        hydra_local = OmegaConf.load(local / ".hydra/hydra.yaml").hydra
        assert (hydra_local.job.num, hydra_local.job.override_dirname) == \
            (hydra_basic.job.num, hydra_basic.job.override_dirname)
        computed = [{key: value for key, value in
                     json.loads((run / "summary.json").read_text()).items()
                     if "seconds" not in key and "per_s" not in key
                     and key not in ("pid", "host")} for run in (basic, local)]
        assert computed[0] == computed[1], name


def test_slurm_launcher_preset() -> None:
    cfg = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                              "hydra.launcher.timeout_min=30"])
    launcher = cfg.hydra.launcher
    # vae-bench's own launcher: submitit's, with bounded waits and checks before sbatch.
    assert launcher._target_.endswith("vae_bench_launcher.slurm_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min) == ("gpu", 30)
    assert launcher.gpus_per_node is None  # follows trainer.device (vae_bench/slurm.py)
    assert launcher.cpus_per_task >= 1 and launcher.mem_gb >= 1
    assert launcher.max_num_timeout == 0  # a resubmitted task would restart from scratch
    # SIGTERM before the limit, which the trainer turns into a checkpointed "interrupted" run.
    assert launcher.additional_parameters.signal == "TERM@120"


# ---------------------------------------------------------------------------------------------
# Real sweeps


@pytest.mark.slow
def test_joblib_sweep_with_a_diverging_job_then_report(tmp_path: Path, capsys) -> None:
    """2 params × 2 seeds × a sane and an absurd SGD learning rate, two jobs at a time: the
    absurd runs diverge, are recorded as such, and the other jobs still complete."""
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                      "param=logvar,logstd", "seed=0,1", "optim=sgd", "optim.lr=0.01,1e3",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]  # a diverged job does not fail a sweep
    # Folders are named by the swept overrides only.
    runs = {p.name: p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")}
    expected = {f"optim.lr={lr},param={param},seed={seed}" for lr in ("0.01", "1000.0")
                for param in ("logvar", "logstd") for seed in (0, 1)}
    assert set(runs) == expected
    for name, run_dir in runs.items():
        assert status_of(run_dir) == ("diverged" if "1000.0" in name else "completed"), name

    assert "8 run(s): 4 completed, 4 diverged" in report_cli(sweep, capsys)
    rows = read_csv(sweep / "report.csv")
    assert sorted(r["run"] for r in rows) == sorted(expected)
    by_run = {r["run"]: r for r in rows}
    for name in expected:
        row = by_run[name]
        assert row["status"] == ("diverged" if "1000.0" in name else "completed")
        assert row["override:optim"] == "sgd" and row["config:optim"] == "sgd"
        assert row["variant"] == name.rsplit(",seed=", 1)[0]
        if row["status"] == "completed":
            assert float(row["test/elbo"]) < 0 and float(row["test/nll_iwae"]) > 0
        else:
            assert row["diverged_step"]
    md = (sweep / "report.md").read_text()
    assert "| optim.lr=1000.0,param=logstd | 0/2 completed | 2/2 |" in md
    assert "### Learning-rate stability" in md and "div 2/2" in md
    assert "### Against the baseline `param=logvar`" in md
    check_figures(sweep)


@pytest.mark.slow
def test_submitit_local_sweep_then_report(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", *TINY, "hydra/launcher=submitit_local", "optim=sgd",
                      "optim.lr=0.01,1e3", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert status_of(sweep / "optim.lr=0.01") == "completed"
    assert status_of(sweep / "optim.lr=1000.0") == "diverged"
    assert (sweep / ".submitit").is_dir()

    report_cli(sweep, capsys)
    rows = read_csv(sweep / "report.csv")  # submitit's own folder holds no run
    assert {r["run"]: r["status"] for r in rows} == {"optim.lr=0.01": "completed",
                                                     "optim.lr=1000.0": "diverged"}
    check_figures(sweep)


@pytest.mark.slow
def test_logstd_equivalence_preset_end_to_end(tmp_path: Path, capsys) -> None:
    """The preset's matched logstd follows logvar bitwise under SGD and up to ε under Adam."""
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", experiment("logstd_equivalence"), *TINY, "seed=0",
                      "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    variants = ("adam_logstd", "adam_logvar", "adam_matched", "sgd_logstd", "sgd_logvar",
                "sgd_matched")
    assert [n.split(",")[0] for n in names] == [f"variant=logstd_equivalence_{v}"
                                                for v in variants]

    report_cli(sweep, capsys)
    md = (sweep / "report.md").read_text()
    section = md[md.index("### logvar / logstd equivalence"):]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if line.startswith("| sweep/variant="):
            rows[cells[0].split("variant=logstd_equivalence_")[1].split(",")[0]] = cells
    assert set(rows) == {"sgd_logstd", "sgd_matched", "adam_logstd", "adam_matched"}
    assert rows["sgd_matched"][3] == "yes, exactly under SGD"
    assert rows["sgd_matched"][4] == "0" and rows["sgd_matched"][6] == "bitwise equal"
    assert rows["adam_matched"][3] == "yes, up to Adam's ε"
    assert float(rows["adam_matched"][4]) < 0.05
    # Without the matching knobs logstd is a different model, and its trajectory shows it.
    for plain in ("sgd_logstd", "adam_logstd"):
        assert rows[plain][3].startswith("no") and rows[plain][6].startswith("differ")
        assert float(rows[plain][4]) > float(rows["adam_matched"][4])


@pytest.mark.slow
def test_running_a_sweep_again_into_its_folder_finishes_it(tmp_path: Path) -> None:
    """After a sweep was cut short (a killed worker makes joblib abort the rest), the same
    command into the same `hydra.sweep.dir` finishes it: completed jobs are skipped, an
    interrupted one resumes from its checkpoint, a killed one that never checkpointed starts
    over (dropping what it logged), both ending as if never stopped; a job that never ran
    trains, and a folder holding another config's run is left untouched."""
    import shutil
    import socket
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    first = run_cli(["train", "-m", *TINY, "seed=0,1,3", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    done, cut, killed = sweep / "seed=0", sweep / "seed=1", sweep / "seed=3"
    expected = {run: json.loads((run / "summary.json").read_text()) for run in (cut, killed)}
    expected_metrics = (killed / "metrics.jsonl").read_text()
    done_metrics = (done / "metrics.jsonl").read_text()
    # seed=1 as if its process had been stopped after epoch 1: last.pt is epoch 1's checkpoint.
    (cut / "checkpoints" / "previous.pt").replace(cut / "checkpoints" / "last.pt")
    (cut / "summary.json").write_text(json.dumps({"status": "interrupted", "signal": "SIGTERM"}))
    # ... and as if it had started under an older vae-bench, whose schema lacked two keys.
    saved = yaml.safe_load((cut / "config.yaml").read_text())
    del saved["eval"]["iwae_k_final"], saved["trainer"]["channels_last"]
    (cut / "config.yaml").write_text(yaml.safe_dump(saved))
    # seed=3 as if SIGKILLed before its first checkpoint, after logging (its whole log stays).
    shutil.rmtree(killed / "checkpoints")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (killed / "summary.json").write_text(json.dumps(
        {"status": "running", "pid": int(gone.stdout), "host": socket.gethostname()}))
    # seed=2's folder holds a run of another config (another lr): it must not be touched.
    other = sweep / "seed=2"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.pt").write_bytes(b"not a real checkpoint")
    (other / "config.yaml").write_text("optim:\n  lr: 0.5\n")
    (other / "summary.json").write_text(json.dumps({"status": "interrupted"}))

    again = run_cli(["train", "-m", *TINY, "seed=0,1,2,3,4", f"hydra.sweep.dir={sweep}"],
                    tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "already completed, skipped" in log
    assert (done / "metrics.jsonl").read_text() == done_metrics
    for run in (cut, killed):
        finished = json.loads((run / "summary.json").read_text())
        assert finished["status"] == "completed"
        for tag in ("test/elbo", "test/kl", "test/nll_iwae", "train/elbo", "step", "epoch"):
            assert finished[tag] == expected[run][tag], (run.name, tag)
        steps = [(r["step"], tuple(sorted(r))) for r in map(json.loads, (run / "metrics.jsonl")
                                                             .read_text().splitlines())]
        assert len(steps) == len(set(steps)), f"{run.name} logged a step twice"
        for tag, points in event_scalars(run).items():  # TensorBoard drops the earlier attempt's
            assert len({s for s, _ in points}) == len(points), (run.name, tag)
    def without_timings(text: str) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k
                 and "examples_per_s" not in k} for line in text.splitlines()]

    assert without_timings((killed / "metrics.jsonl").read_text()) == without_timings(
        expected_metrics)
    assert "starts over" in log and "continuing from its last checkpoint" in log
    assert json.loads((other / "summary.json").read_text()) == {"status": "interrupted"}
    assert "holds an unfinished run of another config" in log
    assert json.loads((sweep / "seed=4" / "summary.json").read_text())["status"] == "completed"


def test_a_finished_run_of_another_config_is_refused_not_skipped(tmp_path: Path) -> None:
    """A sweep run again into a folder whose finished runs were trained under another config
    (a study whose budget changed, or records restored from an older study) must not keep them
    as if they were this job's: the job is refused with the differing keys, the folder kept."""
    from vae_bench.cli import EarlierRunKept, earlier_attempt
    from vae_bench.data import dataset_label

    current = compose_config(TINY)
    for status in ("completed", "diverged"):
        run_dir = tmp_path / status
        run_dir.mkdir()
        summary = {"status": status, "test/elbo": -90.0}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        same = OmegaConf.create(OmegaConf.to_container(current, resolve=True))
        same.log.quiet = not current.log.quiet  # verbosity is not another config
        OmegaConf.save(same, run_dir / "config.yaml")
        assert earlier_attempt(current, run_dir) == ("done", summary)

        other = OmegaConf.create(OmegaConf.to_container(current, resolve=True))
        other.trainer.epochs = current.trainer.epochs + 8
        other.optim.lr = current.optim.lr * 2
        OmegaConf.save(other, run_dir / "config.yaml")
        saved = (run_dir / "config.yaml").read_text()
        with pytest.raises(EarlierRunKept, match=rf"holds a {status} run of another config "
                           r"\(it differs in optim\.lr, trainer\.epochs\)"):
            earlier_attempt(current, run_dir)
        assert (run_dir / "config.yaml").read_text() == saved
        assert json.loads((run_dir / "summary.json").read_text()) == summary

        # Records restored on another machine: the same data under another path is the same
        # run when the summary's data label (checksums, for CIFAR-10) says so; else refused.
        moved = OmegaConf.create(OmegaConf.to_container(current, resolve=True))
        moved.data.root = str(tmp_path / "elsewhere" / "data")
        OmegaConf.save(moved, run_dir / "config.yaml")
        with pytest.raises(EarlierRunKept, match=r"it differs in data\.root\)"):
            earlier_attempt(current, run_dir)  # no label recorded: nothing says it is the same
        labelled = {**summary, "data/label": dataset_label("synthetic", moved.data.root)}
        (run_dir / "summary.json").write_text(json.dumps(labelled))
        assert earlier_attempt(current, run_dir) == ("done", labelled)
        (run_dir / "summary.json").write_text(json.dumps({**labelled, "data/label": "MNIST"}))
        with pytest.raises(EarlierRunKept, match=r"it differs in data\.root\)"):
            earlier_attempt(current, run_dir)

        (run_dir / "config.yaml").unlink()
        with pytest.raises(EarlierRunKept, match="config.yaml is missing"):
            earlier_attempt(current, run_dir)


def test_a_run_started_before_a_new_config_key_is_the_same_run(tmp_path: Path) -> None:
    """A sweep cut short continues under a newer vae-bench: keys the schema gained since then
    take their defaults; verbosity does not count; any value that computes differently does."""
    from omegaconf import OmegaConf

    from vae_bench.config import same_run_config

    current = compose_config(TINY)
    saved = OmegaConf.create(OmegaConf.to_container(current, resolve=True))
    assert same_run_config(saved, current)
    del saved.eval["iwae_max_examples"]  # as if written before that key existed
    assert same_run_config(saved, current)
    saved.log.quiet = not current.log.quiet
    saved.data.download = not current.data.download
    assert same_run_config(saved, current)
    # The data folder, written relative to the working directory or absolute, is one folder.
    saved.data.root = str(tmp_path / "data")
    current.data.root = os.path.relpath(tmp_path / "data")
    assert same_run_config(saved, current)
    current.data.root = str(tmp_path / "other_data")
    assert not same_run_config(saved, current)
    current.data.root = saved.data.root
    saved.optim.lr = current.optim.lr * 2
    assert not same_run_config(saved, current)
    unknown = OmegaConf.create(OmegaConf.to_container(current, resolve=True))
    unknown.trainer["retired_key"] = 1
    assert not same_run_config(unknown, current)
