"""The budget every run of a report shares (data set, model, epochs, IWAE k, optimizer, lr):
stated once at the top of report.md, so that no number in its tables is read without it."""

from __future__ import annotations

from collections.abc import Sequence

from vae_bench.report.runs import Run

DATASET_NAMES = {"mnist": "MNIST", "binarized_mnist": "MNIST, dynamically binarized",
                 "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                 "synthetic": "synthetic blobs (generated from the seed)"}
NOT_RECORDED = "not recorded"
MAX_LISTED = 6  # values of a key that varies, listed before "…"


def run_dataset_label(run: Run) -> str:
    """The data set as the run recorded it (`data/label`, from the files' checksums), else as
    its config suggests (runs from before that key)."""
    recorded = (run.summary or {}).get("data/label")
    return str(recorded) if recorded else dataset_label(run.config)


def dataset_label(config: dict) -> str:
    """The data set as results on it must be named, from a run's config alone. The re-encoded
    CIFAR-10 copy (lossy JPEG, not comparable with published CIFAR-10 numbers) is told apart by
    its folder, which the run's config.yaml records as `data.root`."""
    name = config.get("dataset.name")
    if name is None:
        return NOT_RECORDED
    label = DATASET_NAMES.get(name, str(name))
    if name == "cifar10":
        root = config.get("data.root")
        if root is None:
            return f"{label} (data.root not recorded: maybe a re-encoded copy)"
        if "jpeg" in str(root).lower():
            return f"{label} (JPEG re-encoding)"
    return label


def model_label(config: dict) -> str:
    name = config.get("model.name")
    if name is None:
        return NOT_RECORDED
    parts = [str(name)]
    if config.get("model.latent_dim") is not None:
        parts.append(f"{config['model.latent_dim']} latents")
    if config.get("model.hidden") is not None:
        parts.append(f"hidden {config['model.hidden']}")
    return ", ".join(parts)


def epochs_label(config: dict) -> str:
    epochs = config.get("trainer.epochs")
    if epochs is None:
        return NOT_RECORDED
    text = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    if config.get("trainer.max_steps_per_epoch"):
        text += f" of at most {config['trainer.max_steps_per_epoch']} steps"
    if config.get("trainer.batch_size") is not None:
        text += f", batch size {config['trainer.batch_size']}"
    return text


def iwae_label(config: dict) -> str:
    k = iwae_k(config)
    if k is None:
        return NOT_RECORDED
    examples = config.get("eval.iwae_max_examples")
    where = f"the first {examples} test images" if examples else "the whole test split"
    return f"k={k} importance samples, on {where}, at the end of training"


def optimizer_label(config: dict) -> str:
    name, lr = config.get("optim.name"), config.get("optim.lr")
    if name is None and lr is None:
        return NOT_RECORDED
    return f"{name if name is not None else '?'}, lr {lr:g}" if lr is not None else str(name)


def iwae_k(config: dict, summary: dict | None = None) -> int | None:
    k = config.get("eval.iwae_k")
    if k is None and summary:
        k = summary.get("eval/iwae_k")
    return as_k(k)


def as_k(value) -> int | None:
    """A recorded number of importance samples, or None where there is none."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


BUDGET_ITEMS = (("model", model_label),
                ("likelihood", lambda config: str(config.get("likelihood.name", NOT_RECORDED))),
                ("training", epochs_label), ("optimizer", optimizer_label),
                ("IWAE", iwae_label))


def shared_or_varying(values: Sequence[str]) -> str:
    distinct = sorted(set(values))
    if len(distinct) == 1:
        return distinct[0]
    listed = "; ".join(distinct[:MAX_LISTED]) + ("; …" if len(distinct) > MAX_LISTED else "")
    return f"*varies between runs* ({len(distinct)} settings: {listed})"


def budget_lines(runs: Sequence[Run]) -> list[str]:
    """Markdown: one bullet per part of the budget, its value where every run shares it."""
    readable = [run for run in runs if run.config]
    configs = [run.config for run in readable]
    if not configs:
        return []
    lines = ["## Budget", "",
             f"What the {len(configs)} run(s) with a readable config were given; a part that "
             "differs between runs says so.", ""]
    lines.append(f"- **data set**: "
                 f"{shared_or_varying([run_dataset_label(run) for run in readable])}")
    lines += [f"- **{name}**: {shared_or_varying([label(c) for c in configs])}"
              for name, label in BUDGET_ITEMS]
    return lines + [""]


def iwae_metric_label(runs: Sequence[Run], metric: str = "test/nll_iwae") -> str:
    """`test/nll_iwae (k=1000)`: an IWAE estimate means little without its k."""
    ks = sorted({k for run in runs if (k := iwae_k(run.config, run.summary)) is not None})
    if not ks:
        return f"{metric} (k not recorded)"
    if len(ks) == 1:
        return f"{metric} (k={ks[0]})"
    return f"{metric} (k varies: {', '.join(map(str, ks))})"


def iwae_final_label(runs: Sequence[Run]) -> str:
    """`test/nll_iwae_final (k=5000: seed 0; k=1000: seeds 1, 2)`: a study may give some seeds a
    larger final k than others; a pair of runs of one seed still shares its k."""
    seeds_by_k: dict[int, set] = {}
    for run in runs:
        k = as_k(run.summary.get("eval/iwae_k_final", run.config.get("eval.iwae_k_final")))
        if "test/nll_iwae_final" in run.summary and k is not None:
            seeds_by_k.setdefault(k, set()).add(run.seed)
    if not seeds_by_k:
        return "test/nll_iwae_final (k not recorded)"
    if len(seeds_by_k) == 1:
        return f"test/nll_iwae_final (k={next(iter(seeds_by_k))})"

    def seeds_text(seeds: set) -> str:
        listed = ", ".join(str(s) for s in sorted(seeds, key=str))
        return f"seed{'s' if len(seeds) > 1 else ''} {listed}"

    parts = [f"k={k}: {seeds_text(seeds)}"
             for k, seeds in sorted(seeds_by_k.items(), reverse=True)]
    return f"test/nll_iwae_final ({'; '.join(parts)})"

