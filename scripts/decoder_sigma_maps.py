#!/usr/bin/env python3
"""Where a learned decoder σₓ collapses, and what each σ-map's floor or bound does about it.
Run: `scripts/decoder_sigma_maps.py <decoder_variance sweep folder> --out <folder>` (below).

A per-pixel Gaussian σₓ on pixels that are always 0 (MNIST's background) can shrink without
limit, and log N(0; m, σₓ²) grows like −log σₓ: the likelihood is unbounded (Mattei & Frellsen
2018), and a "better" test ELBO then measures how far σₓ fell, not a better model. This reads
the runs of a decoder sweep (decoder_variance, decoder_variance_bounded, cifar_decoder: the
config.yaml and last checkpoint of each), decodes the test set at the posterior mean, keeps each
run's row in its folder (decoder_sigma.json, which the study's records keep, so that a run
restored without its checkpoint still has its row), and writes:

  decoder_sigma.json  per run: the map's σₓ floor, the largest log-density one pixel can give
                      at that floor, σₓ percentiles over all test pixels, the share of pixel
                      values within 1% of the floor, and the log-density the always-zero pixels
                      contribute, against the whole reconstruction term (for a discretized
                      likelihood: log-probabilities, at most 0 per pixel)
  decoder_sigma.md    the same, one row per variant (mean over seeds)
  decoder_sigma.png   mean log10 σₓ per pixel, one panel per variant (first seed)

    python scripts/decoder_sigma_maps.py outputs/findings/decoder_variance \
        --out docs/findings/decoder_variance
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from vae_bench import checkpoints
from vae_bench.config import data_root, load_run_config
from vae_bench.data import load_splits, to_float
from vae_bench.likelihoods import DISCRETIZED_LIKELIHOODS, needs_sigma_output
from vae_bench.models import VAE
from vae_bench.objectives import LOG_2PI
from vae_bench.parameterizations import get_sigma_map
from vae_bench.train import synthetic_sizes

AT_FLOOR = 1.01  # σₓ within 1% of the map's lower bound counts as sitting on it
# Each run's row is also kept in its own folder, which its study record keeps
# (scripts/study_records.py): the checkpoint it comes from is not kept.
PER_RUN = "decoder_sigma.json"


def sigma_x_of(model: VAE, cfg, images_u8: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """log σₓ for every test image and pixel, decoded at the posterior mean, shape (N, D)."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images_u8), batch):
            x = to_float(images_u8[start:start + batch], False)
            decoded = model.decode(model.encode(x).mu)
            s_x = decoded.s_x.expand_as(decoded.mean_out)
            _, logvar = get_sigma_map(cfg.likelihood.param).sigma_logvar(s_x, cfg.likelihood)
            chunks.append(0.5 * logvar)
    return torch.cat(chunks)


def analyse(run_dir: Path, splits_cache: dict) -> dict | None:
    """The run's row, from its last checkpoint. The row kept beside the run stands in for it
    where it came from the same checkpoint (the same training step: decoding a CIFAR-10 test
    set takes about half a minute a run), or where the checkpoint is gone (a run restored from
    its study record on another machine)."""
    cfg = load_run_config(run_dir / "config.yaml")
    learned_sigma = needs_sigma_output(cfg.likelihood.name, cfg.likelihood) is not None
    if not learned_sigma:
        return None
    kept = json.loads((run_dir / PER_RUN).read_text()) if (run_dir / PER_RUN).is_file() else None
    if not checkpoints.exists(run_dir):
        return kept
    payload, _ = checkpoints.load_payload(run_dir)
    if kept is not None and kept.get("checkpoint_step") == payload["state"]["step"]:
        return kept
    row = analyse_checkpoint(run_dir, cfg, payload, splits_cache)
    (run_dir / PER_RUN).write_text(json.dumps(row) + "\n")
    return row


def analyse_checkpoint(run_dir: Path, cfg, payload: dict, splits_cache: dict) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    # The run's own images: synthetic data are drawn from the run's sizes and seed.
    sizes = synthetic_sizes(cfg.dataset)
    key = (cfg.dataset.name, str(data_root(cfg)), tuple(sorted(sizes.items())),
           cfg.seed if cfg.dataset.name == "synthetic" else None)
    if key not in splits_cache:
        splits_cache[key] = load_splits(cfg.dataset.name, data_root(cfg), False, **sizes,
                                        synthetic_seed=cfg.seed)
    splits = splits_cache[key]
    model = VAE(cfg, splits.image_shape)
    model.load_state_dict(payload["model"])
    model.eval()
    log_sigma = sigma_x_of(model, cfg, splits.test)
    floor = get_sigma_map(cfg.likelihood.param).sigma_bounds(cfg.likelihood)[0]
    # Pixels that are 0 in every training image: their σₓ has nothing to explain.
    background = (splits.train.flatten(1) == 0).all(0)
    # log N(x; m, σₓ²) of those pixels at the decoded mean (x = 0 there in training; in the test
    # split too for nearly all of them), summed per image.
    test_x = to_float(splits.test, False).flatten(1)
    with torch.no_grad():
        mean = torch.sigmoid(model.decode(model.encode(to_float(splits.test, False)).mu)
                             .mean_out)
    if cfg.likelihood.name in DISCRETIZED_LIKELIHOODS:  # a log-probability per pixel, ≤ 0
        log_density = DISCRETIZED_LIKELIHOODS[cfg.likelihood.name](test_x, mean, log_sigma)
    else:
        log_density = -0.5 * (LOG_2PI + 2 * log_sigma
                              + (test_x - mean) ** 2 / torch.exp(2 * log_sigma))
    sigma = log_sigma.exp()
    quantiles = torch.quantile(log_sigma.flatten()[::97].double(),
                               torch.tensor([0.0, 0.01, 0.5, 0.99], dtype=torch.float64)).exp()
    return {
        "run": run_dir.name,
        "variant": ",".join(item for item in run_dir.name.split(",")
                            if not item.startswith(("seed=", "dataset="))),
        "status": summary.get("status"),
        "checkpoint_step": payload["state"]["step"],
        "likelihood": cfg.likelihood.name,
        "dataset": cfg.dataset.name,
        "channels": splits.image_shape[0],
        "sigma_map": cfg.likelihood.param,
        "sigma_floor": floor,
        # A probability is at most 1; a density at σₓ = floor peaks at 1/(floor·√(2π)).
        "max_log_density_per_pixel": 0.0 if cfg.likelihood.name in DISCRETIZED_LIKELIHOODS
        else (-math.log(floor) - 0.5 * LOG_2PI) if floor > 0 else math.inf,
        "sigma_x_min": sigma.min().item(),
        "sigma_x_p1_p50_p99": [float(q) for q in quantiles[1:]],
        "share_at_floor": (sigma <= floor * AT_FLOOR).double().mean().item() if floor > 0
        else None,
        "background_pixels": int(background.sum()),
        "background_log_density": log_density[:, background].sum(1).mean().item(),
        "recon_log_density": log_density.sum(1).mean().item(),
        "test_elbo": summary.get("test/elbo"),
        "test_bpd": summary.get("test/bpd"),
        # Colour images: averaged over the channels too (one panel per run).
        "mean_log10_sigma_x": (log_sigma.mean(0) / math.log(10)).view(splits.image_shape)
        .mean(0).tolist(),
    }


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, float) and (abs(value) >= 1e4 or 0 < abs(value) < 1e-2):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(f"{row['dataset']} {row['variant']}", []).append(row)
    lines = ["| data set, variant | σₓ floor | max log-density / pixel | σₓ p1 / p50 | "
             "share at floor | background log-density | recon log-density | test ELBO | "
             "test bpd | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def mean(runs: list[dict], key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.fmean(values) if values else None

    for variant, runs in sorted(by_variant.items()):
        p1 = statistics.fmean(r["sigma_x_p1_p50_p99"][0] for r in runs)
        p50 = statistics.fmean(r["sigma_x_p1_p50_p99"][1] for r in runs)
        background = runs[0]["background_pixels"] > 0  # natural images have no empty pixel
        lines.append(
            f"| {variant} | {fmt(runs[0]['sigma_floor'], 4)} | "
            f"{fmt(runs[0]['max_log_density_per_pixel'])} | {fmt(p1, 4)} / {fmt(p50, 3)} | "
            f"{fmt(mean(runs, 'share_at_floor'))} | "
            f"{fmt(mean(runs, 'background_log_density'), 0) if background else '– (none)'} | "
            f"{fmt(mean(runs, 'recon_log_density'), 0)} | {fmt(mean(runs, 'test_elbo'), 1)} | "
            f"{fmt(mean(runs, 'test_bpd'), 3)} | {len(runs)} |")
    return "\n".join(lines) + "\n"


def short_name(variant: str) -> str:
    for prefix in ("variant=decoder_variance_", "variant=decoder_bounded_",
                   "variant=cifar_decoder_"):
        variant = variant.replace(prefix, "")
    return variant


def figure(rows: list[dict], out: Path) -> None:
    """One row of panels per data set, one panel per variant (its first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first: dict[tuple[str, str], dict] = {}
    for row in sorted(rows, key=lambda r: r["run"]):
        first.setdefault((row["dataset"], row["variant"]), row)
    datasets = sorted({dataset for dataset, _ in first})
    variants = sorted({variant for _, variant in first})
    if len(datasets) == 1:  # one data set: wrap its variants over rows of four
        columns = min(4, len(variants))
        places = {(datasets[0], v): divmod(i, columns) for i, v in enumerate(variants)}
        rows_count = math.ceil(len(variants) / columns)
    else:
        columns, rows_count = len(variants), len(datasets)
        places = {(d, v): (datasets.index(d), variants.index(v)) for d, v in first}
    fig, axes = plt.subplots(rows_count, columns, figsize=(3.0 * columns + 1, 3.2 * rows_count),
                             squeeze=False, layout="constrained")
    images = {key: torch.tensor(row["mean_log10_sigma_x"]) for key, row in first.items()}
    low = min(float(image.min()) for image in images.values())
    high = max(float(image.max()) for image in images.values())
    for axis in axes.flat:
        axis.axis("off")
    for key, image in sorted(images.items()):
        axis = axes[places[key]]
        shown = axis.imshow(image, vmin=low, vmax=high, cmap="viridis")
        axis.set_title(f"{key[0]}\n{short_name(key[1])}", fontsize=9)
    fig.colorbar(shown, ax=axes, shrink=0.8, label="mean log10 σₓ over the test set")
    colour = any(row.get("channels", 1) > 1 for row in first.values())
    fig.suptitle("Decoder σₓ per pixel\n(seed 0, z = posterior mean"
                 + (";\nmean over colour channels)" if colour else ")"), fontsize=10)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache: dict = {}
    rows = [row for sweep in args.sweeps for run in sorted(sweep.iterdir())
            if (run / "config.yaml").is_file() and (row := analyse(run, cache)) is not None]
    if not rows:
        raise SystemExit(f"no run with a learned decoder σₓ and a checkpoint (or its kept "
                         f"{PER_RUN}) in {args.sweeps}")
    args.out.mkdir(parents=True, exist_ok=True)
    slim = [{k: v for k, v in row.items() if k != "mean_log10_sigma_x"} for row in rows]
    (args.out / "decoder_sigma.json").write_text(json.dumps(slim, indent=2) + "\n")
    (args.out / "decoder_sigma.md").write_text(table(rows))
    figure(rows, args.out / "decoder_sigma.png")
    print(table(rows))
    print(f"wrote {args.out}/decoder_sigma.{{json,md,png}}")


if __name__ == "__main__":
    main()
