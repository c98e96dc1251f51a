"""Command-line mistakes, checked in-process: each is refused with exit 2 and one line that names
the key and the bad value and proposes a fix for that key, before any folder is created. Also:
device selection, and a run config holds only the keys its choices use."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import TINY, compose_config
from omegaconf import OmegaConf

from vae_bench import cli
from vae_bench.config import ConfigError, run_schema
from vae_bench.preflight import check_command_line, check_runnable
from vae_bench.train import pick_device, train
from vae_bench.validation import validate

SYNTHETIC = ["dataset=synthetic", "trainer.threads=1"]

# argv after `train` -> words the message must hold (the key, the value, the fix).
MISTAKES = {
    "unknown key": (["trainer.epoch=3"],
                    ["trainer.epoch=3", "did you mean `trainer.epochs`?", "`trainer.epochs=3`"]),
    "unknown key with +": (["+trainer.epoch=3"],
                           ["+trainer.epoch=3", "did you mean `trainer.epochs`?"]),
    "synonym": (["optim.learning_rate=0.1"], ["did you mean `optim.lr`?", "`optim.lr=0.1`"]),
    "top-level leaf": (["epochs=3"], ["epochs=3", "did you mean `trainer.epochs`?"]),
    "a section": (["trainer=5"], ["`trainer` is a section", "epochs"]),
    "+ on a key that exists": (["+trainer.epochs=3"],
                               ["in the config already", "`trainer.epochs=3`"]),
    "deleting a key": (["~trainer.epochs"], ["cannot be deleted", "`trainer.epochs=10`"]),
    "unknown choice": (["param=log_var"], ["param=log_var", "did you mean `param=logvar`?",
                                           "softplus_std"]),
    "misspelled data set": (["dataset=mnsit"], ["did you mean `dataset=mnist`?"]),
    "not a number": (["optim.lr=abc"], ["optim.lr=abc", "must be a number", "`optim.lr=0.001`"]),
    "a float for an int": (["trainer.epochs=1.5"], ["trainer.epochs=1.5", "whole number",
                                                    "`trainer.epochs=10`"]),
    "malformed": (["optim.lr=="], ["`optim.lr==`", "key=value", "`optim.lr=0.001`"]),
    "empty value": (["seed="], ["seed=", "whole number", "`seed=0`"]),
    "a sweep without -m": (["seed=0,1"], ["seed=0,1", "add `-m`"]),
    "a key of another data set": (["dataset=mnist", "dataset.num_train=5"],
                                  ["dataset.num_train", "applies only to dataset=synthetic",
                                   "dataset=mnist"]),
    "+ a key of another data set": (["dataset=mnist", "+dataset.num_train=5"],
                                    ["applies only to dataset=synthetic"]),
    "an option of another σ-map": (["param.floor=0.1"],
                                   ["param.floor", "param=softplus_std", "param=logvar"]),
    "sigma of a learned likelihood": (["likelihood=gaussian_pixel", "likelihood.sigma=0.1"],
                                      ["likelihood.sigma", "likelihood=gaussian_fixed"]),
    "an option of another optimizer": (["optim.momentum=0.9"], ["optim=sgd", "optim=adam"]),
    "no hidden layer": (["model.hidden=[]"], ["model.hidden=[]", "`model.hidden=[400]`"]),
    "conv with two dense widths": (["model=conv", "model.hidden=[64,32]"],
                                   ["model.hidden=[64,32]", "exactly one width",
                                    "`model.hidden=[256]`"]),
    "not a device": (["trainer.device=gpu"], ["trainer.device='gpu'", "cuda:N",
                                              "`trainer.device=auto`"]),
    "not a device index": (["trainer.device=cuda:x"], ["trainer.device='cuda:x'"]),
    "a bad choice in a sweep": (["-m", "param=logvar,log_var"], ["param=log_var"]),
    "a bad value in a sweep": (["-m", "trainer.epochs=1,x"], ["trainer.epochs=x"]),
    "a key of another choice in a sweep": (["-m", "dataset=synthetic,mnist",
                                            "dataset.num_train=8"],
                                           ["applies only to dataset=synthetic"]),
    "--cfg job checks keys too": (["--cfg", "job", "trainer.epoch=3"], ["trainer.epochs"]),
}


def refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *argv])
    assert exit_.value.code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("vae-bench: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mistake_gets_one_line_naming_its_key_and_fix(name, tmp_path, monkeypatch,
                                                           capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    argv, expected = MISTAKES[name]
    first_override = next(i for i, arg in enumerate(argv) if "=" in arg or arg.startswith("~"))
    flags, overrides = argv[:first_override], argv[first_override:]
    base = [] if "dataset=mnist" in argv else SYNTHETIC
    err = refused([*flags, *base, *overrides], capsys)
    for text in expected:
        assert text in err, (text, err)
    assert "optim.lr=1e-3" not in err  # the old one-size-fits-all fix
    assert list(tmp_path.iterdir()) == []  # refused before Hydra made any folder


def test_fixes_it_proposes_are_accepted(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["trainer.epochs=3"], ["optim.lr=0.1"], ["param=logvar"], ["model.hidden=[400]"],
                 ["dataset=synthetic", "dataset.num_train=5"], ["param=softplus_std",
                                                               "param.floor=0.1"]):
        assert check_command_line([*SYNTHETIC, *argv]) is not None


@pytest.mark.parametrize("argv", [["data.root=/nonexistent", "dataset=mnist",
                                   "data.download=false"],
                                  ["dataset=synthetic", "trainer.device=cuda"]])
def test_missing_data_or_device_leaves_no_run_folder(argv, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = refused(argv, capsys)
    assert "data.root" in err or "trainer.device=cuda" in err
    assert not (tmp_path / "outputs").exists()


def test_hydra_full_error_raises_instead(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="trainer.epochs"):
        cli.main(["train", "trainer.epoch=3"])


# ---- devices --------------------------------------------------------------------------------


def fake_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_picks_cpu_without_cuda_and_cuda_with_it(monkeypatch) -> None:
    fake_cuda(monkeypatch, 0)
    assert pick_device("auto") == torch.device("cpu")
    fake_cuda(monkeypatch, 2)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda:1")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_refused(device, monkeypatch) -> None:
    fake_cuda(monkeypatch, 0)
    with pytest.raises(ConfigError, match=f"trainer.device={device}: CUDA is not available"):
        pick_device(device)


def test_a_gpu_index_beyond_the_machine_is_refused(monkeypatch) -> None:
    fake_cuda(monkeypatch, 2)
    with pytest.raises(ConfigError) as info:
        pick_device("cuda:7")
    assert "trainer.device=cuda:7" in str(info.value)
    assert "2 CUDA devices, cuda:0 to cuda:1" in str(info.value)
    assert "`trainer.device=cuda:0`" in str(info.value)


def test_a_gpu_index_beyond_the_machine_is_refused_on_the_command_line(tmp_path, monkeypatch,
                                                                      capsys) -> None:
    monkeypatch.chdir(tmp_path)
    fake_cuda(monkeypatch, 1)
    err = refused([*SYNTHETIC, "trainer.device=cuda:3"], capsys)
    assert "1 CUDA device, cuda:0 to cuda:0" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_tiny_epoch_trains_on_cuda(tmp_path) -> None:
    cfg = compose_config([*TINY, "trainer.epochs=1", "trainer.device=cuda"])
    check_runnable(cfg)
    summary = train(cfg, tmp_path, quiet=True)
    assert summary["status"] == "completed"
    assert torch.isfinite(torch.tensor(summary["test/elbo"]))


# ---- a config holds the keys its choices use ------------------------------------------------


def keys_of(overrides: list[str], group: str) -> set[str]:
    return set(compose_config(overrides)[group])


def test_keys_that_only_one_choice_uses_appear_only_with_that_choice() -> None:
    assert keys_of(["dataset=mnist"], "dataset") == {"name", "binarize"}
    assert keys_of(["dataset=synthetic"], "dataset") == {
        "name", "binarize", "num_train", "num_test", "image_size", "channels"}
    assert keys_of(["param=logvar"], "param") == {"name"}
    assert keys_of(["param=natural"], "param") == {"name", "floor"}
    assert keys_of(["param=soft_clamped_logvar"], "param") == {"name", "min_logvar",
                                                               "max_logvar"}
    assert keys_of(["param=sigmoid_bounded"], "param") == {"name", "sigma_min", "sigma_max"}
    assert keys_of(["likelihood=bernoulli"], "likelihood") == {"name"}
    assert keys_of(["likelihood=gaussian_fixed"], "likelihood") == {"name", "sigma"}
    assert "param" in keys_of(["likelihood=gaussian_shared"], "likelihood")
    assert "sigma" not in keys_of(["likelihood=gaussian_pixel"], "likelihood")
    assert "channels" not in keys_of(["model=mlp"], "model")
    assert "channels" in keys_of(["model=conv"], "model")
    assert "momentum" not in keys_of(["optim=adam"], "optim")
    assert "betas" not in keys_of(["optim=sgd"], "optim")


def test_a_saved_config_merges_onto_the_schema_of_its_choices() -> None:
    saved = OmegaConf.create(OmegaConf.to_container(
        compose_config([*TINY, "param=sigmoid_bounded", "likelihood=gaussian_fixed"]),
        resolve=True))
    cfg = OmegaConf.merge(run_schema(saved), saved)
    validate(cfg)
    assert cfg.param.sigma_max == 2.0 and cfg.likelihood.sigma == 0.1
    with pytest.raises(Exception, match="floor"):  # still struct: another map's option is not
        cfg.param.floor = 0.1


def test_renaming_a_choice_by_its_name_key_is_refused() -> None:
    cfg = compose_config([*SYNTHETIC, "param.name=natural"])
    with pytest.raises(ConfigError, match="choose it with `param=natural`"):
        validate(cfg)


def test_a_reader_that_goes_away_ends_the_output_quietly() -> None:
    """`vae-bench --help | head -1`: stdout's reader is gone before vae-bench writes."""
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "vae_bench", "--help"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert done.stderr == ""
