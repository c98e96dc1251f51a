"""`vae-bench train --help`: the user's config groups with their choices, and one line for each
key outside the groups. Hydra's own help would also list the internal `schema/*` groups (the
structured configs behind each choice) and explain no key; `--hydra-help` still shows Hydra's."""

from __future__ import annotations

import textwrap

from omegaconf import OmegaConf

from vae_bench.config import config_dir
from vae_bench.preflight import config_groups, schema_keys

GROUPS = {
    "dataset": "the data set (files under data.root; synthetic needs none)",
    "model": "the encoder/decoder network",
    "param": "the encoder's σ-map: how its raw output s becomes σ (what vae-bench compares)",
    "likelihood": "p(x | z), the decoder's distribution",
    "optim": "the optimizer",
    "variant": "named settings of several keys at once, which the studies sweep over",
    "experiment": "a whole study, to run with -m (e.g. -m experiment=param_sweep_mnist)",
}
# One line per key outside the groups; tests/test_first_hour.py checks that none is missing.
KEYS = {
    "seed": "seeds the initial weights, the data order and the ε draws",
    "trainer.epochs": "passes over the training split",
    "trainer.batch_size": "training examples per step",
    "trainer.device": "auto (CUDA when present), cpu, cuda or cuda:N",
    "trainer.threads": "CPU threads torch uses (null: torch's default)",
    "trainer.gpu_memory_fraction": "cap on this run's share of the GPU's memory, in (0, 1]",
    "trainer.compile": "torch.compile the ELBO forward",
    "trainer.channels_last": "NHWC memory layout for model=conv (not bitwise equal to NCHW)",
    "trainer.precision": "fp32 or bf16 (autocast)",
    "trainer.on_nonfinite": "stop: end at the first NaN/Inf step; skip: skip such steps",
    "trainer.max_skips": "with on_nonfinite=skip: consecutive skips that end the run",
    "trainer.check_every": "steps between checks for a non-finite loss (stop mode)",
    "trainer.max_steps_per_epoch": "cap on steps per epoch, for quick tries (null: none)",
    "eval.batch_size": "test examples per evaluation batch",
    "eval.iwae_k": "importance samples of the test/nll_iwae estimate",
    "eval.iwae_chunk": "importance samples held in memory at once",
    "eval.iwae_every": "epochs between IWAE estimates (0: only at the end), or a list of epochs",
    "eval.iwae_k_final": "a second, final IWAE estimate with this k (test/nll_iwae_final)",
    "eval.iwae_max_examples": "estimate IWAE on the first N test images only (null: all)",
    "data.root": "folder holding the data sets (default $VAE_BENCH_DATA, else ./data)",
    "data.download": "fetch a data set absent from data.root (never over files there)",
    "log.quiet": "no epoch lines on the console (train.log keeps them)",
    "log.every_steps": "steps per logged mean of the training objective",
    "log.diagnostics": "log gradient, posterior and latent diagnostics",
    "log.grad_every": "steps between gradient and posterior diagnostics",
    "log.snr_window": "steps in each σ-head gradient SNR window",
    "log.hist_every": "steps between log σ² histograms",
    "log.images": "log reconstructions and samples as images",
}
WIDTH = 100


def group_defaults() -> dict[str, str]:
    """The choice train.yaml's defaults list makes for each group."""
    defaults = OmegaConf.load(config_dir() / "train.yaml").defaults
    chosen = {}
    for entry in defaults:
        if OmegaConf.is_dict(entry):
            for group, choice in entry.items():
                chosen[str(group)] = "none" if choice is None else str(choice)
    return chosen


def top_level_keys() -> list[str]:
    """Every schema key outside the config groups, in the schema's order."""
    return [key for key, info in schema_keys().items() if info.group is None]


def key_default(key: str) -> str:
    default = schema_keys()[key].default()
    if default is None:
        return "null"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


def wrapped(label: str, text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=f"  {label:<{indent - 2}}",
                         subsequent_indent=" " * indent)


def train_help() -> str:
    defaults = group_defaults()
    lines = ["vae-bench train: train one VAE. Every setting is one override away.", "",
             "usage: vae-bench train [group=choice ...] [key=value ...]",
             "       vae-bench train -m key=a,b [...]     a sweep: one run per combination",
             "       vae-bench train --cfg job [...]      print the composed config, train nothing",
             "",
             "config groups (group=choice; the default is marked *):"]
    for group, choices in config_groups().items():
        marked = [f"{choice}*" if choice == defaults.get(group) else choice
                  for choice in choices]
        lines += wrapped(group, GROUPS.get(group, ""), 18)
        lines += textwrap.wrap(" ".join(marked), WIDTH, initial_indent=" " * 20,
                               subsequent_indent=" " * 20)
    presets = sorted(path.stem for path in (config_dir() / "hydra" / "launcher").glob("*.yaml"))
    lines += wrapped("hydra/launcher", "where a sweep's jobs run: one after another (basic), in "
                     "parallel here (joblib, joblib_gpu), or on a SLURM cluster (slurm)", 18)
    lines += textwrap.wrap(" ".join(["basic*", "joblib", *presets, "submitit_local"]), WIDTH,
                           initial_indent=" " * 20, subsequent_indent=" " * 20)
    lines += ["", "keys (key=value; default in brackets):"]
    for key in top_level_keys():
        lines += wrapped(key, f"{KEYS.get(key, '')} [{key_default(key)}]", 31)
    lines += ["",
              "A group's own keys (model.latent_dim, optim.lr, param.floor, ...) are listed by",
              "`vae-bench train <group>=<choice> --cfg job`. Hydra's own flags: --hydra-help.",
              "",
              "examples:",
              "  vae-bench train param=softplus_std dataset=fashion_mnist trainer.epochs=20",
              "  vae-bench train -m param=logvar,logstd seed=0,1,2 log.quiet=true"]
    return "\n".join(lines)
