"""Diagnostics: the tags reach TensorBoard and summary.json, their values are sane, the gradient
statistics agree with a direct computation, and a saturating σ-map is seen to saturate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config, event_accumulator

from vae_bench.diagnostics import Diagnostics, saturated_fraction
from vae_bench.estimators import elbo_terms
from vae_bench.models import VAE
from vae_bench.tracking import Tracker
from vae_bench.train import train

GRAD_TAGS = {
    "grad/norm_total", "grad/norm_mu_head", "grad/norm_sigma_head", "grad/sigma_mu_ratio",
    "grad/dloss_ds_abs", "grad/snr_sigma_head", "grad/update_ratio_mu_head",
    "grad/update_ratio_sigma_head",
}
POSTERIOR_TAGS = {
    "posterior/sigma_mean", "posterior/sigma_min", "posterior/sigma_max", "posterior/s_mean",
    "posterior/s_min", "posterior/s_max", "posterior/saturated_frac",
    "posterior/logvar_nonfinite",
}


@pytest.fixture(scope="module")
def gaussian_pixel_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("diag") / "run"
    cfg = compose_config([*TINY, "likelihood=gaussian_pixel", "param=softplus_std"])
    summary = train(cfg, run_dir, quiet=True)
    return run_dir, summary


def test_every_diagnostic_tag_is_in_the_event_file(gaussian_pixel_run) -> None:
    run_dir, _ = gaussian_pixel_run
    accumulator = event_accumulator(run_dir)
    tags = accumulator.Tags()
    expected = GRAD_TAGS | POSTERIOR_TAGS | {"grad/norm_decoder_sigma", "latent/active_units",
                                             "health/nonfinite_steps"}
    assert expected <= set(tags["scalars"]), expected - set(tags["scalars"])
    assert {"posterior/logvar", "latent/kl_per_dim"} <= set(tags["histograms"])
    assert {"images/reconstructions", "images/samples",
            "latent/kl_per_dim_sorted"} <= set(tags["images"])
    # Custom-scalars layout and the hparams entry live in the run's own folder.
    assert "custom_scalars__config__" in tags["tensors"]
    assert {"_hparams_/experiment", "_hparams_/session_start_info",
            "_hparams_/session_end_info"} <= set(accumulator.PluginTagToContent("hparams"))


def test_every_dashboard_chart_shows_logged_tags(gaussian_pixel_run) -> None:
    """The custom-scalars layout names tags by string: a renamed tag would leave an empty chart."""
    from vae_bench.diagnostics import LAYOUT

    run_dir, _ = gaussian_pixel_run
    logged = set(event_accumulator(run_dir).Tags()["scalars"])
    for section, charts in LAYOUT.items():
        for title, (kind, tags) in charts.items():
            assert kind == "Multiline"
            assert set(tags) <= logged, f"{section} / {title}: {set(tags) - logged} not logged"


def test_no_extra_runs_beside_the_run_folder(gaussian_pixel_run) -> None:
    run_dir, _ = gaussian_pixel_run
    event_dirs = {p.parent for p in run_dir.parent.rglob("events.out.tfevents*")}
    assert event_dirs == {run_dir}


def test_values_are_sane(gaussian_pixel_run) -> None:
    run_dir, summary = gaussian_pixel_run
    for tag in ("grad/norm_total", "grad/norm_mu_head", "grad/norm_sigma_head",
                "grad/norm_decoder_sigma", "grad/dloss_ds_abs", "grad/snr_sigma_head",
                "grad/update_ratio_mu_head", "grad/update_ratio_sigma_head"):
        assert math.isfinite(summary[tag]) and summary[tag] > 0, tag
    assert 0 <= summary["latent/active_units"] <= 20
    assert 0.0 <= summary["posterior/saturated_frac"] <= 1.0
    assert summary["posterior/sigma_min"] <= summary["posterior/sigma_mean"] \
        <= summary["posterior/sigma_max"]
    assert summary["health/nonfinite_steps"] == 0
    # The whole-model norm bounds each head's norm.
    assert summary["grad/norm_total"] >= summary["grad/norm_sigma_head"]


def test_summary_and_metrics_hold_every_scalar_tag(gaussian_pixel_run) -> None:
    run_dir, summary = gaussian_pixel_run
    scalar_tags = set(event_accumulator(run_dir).Tags()["scalars"])
    assert scalar_tags <= set(summary), scalar_tags - set(summary)
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["grad/norm_sigma_head"] == summary["grad/norm_sigma_head"]
    logged = set()
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        logged |= set(json.loads(line))
    assert scalar_tags <= logged


def test_hparams_entry_names_the_run(gaussian_pixel_run) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, _ = gaussian_pixel_run
    contents = event_accumulator(run_dir).PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(contents["_hparams_/session_start_info"])
    hparams = data.session_start_info.hparams
    assert hparams["param"].string_value == "softplus_std"
    assert hparams["likelihood"].string_value == "gaussian_pixel"
    assert hparams["status"].string_value == "completed"
    # Whole numbers as text: TensorBoard prints numbers with 5 digits (seed 0 as 0.0000).
    assert hparams["seed"].string_value == "0"
    assert hparams["batch_size"].string_value == "32"
    assert hparams["latent_dim"].string_value == "20"
    assert (hparams["epochs"].string_value, hparams["iwae_k"].string_value) == ("2", "4")
    assert hparams["lr"].number_value == pytest.approx(1e-3)
    metrics = plugin_data_pb2.HParamsPluginData.FromString(contents["_hparams_/experiment"])
    names = {m.name.tag for m in metrics.experiment.metric_infos}
    assert names == {"test/elbo", "test/nll_iwae", "test/kl", "latent/active_units"}


def test_gradient_norms_match_a_direct_computation(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "model.hidden=[8]", "model.latent_dim=3",
                          "likelihood=gaussian_shared", "log.grad_every=1", "log.snr_window=1"])
    torch.manual_seed(0)
    model = VAE(cfg, (1, 4, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = Tracker(tmp_path)
    diagnostics = Diagnostics(model, cfg.log, tracker)
    x = torch.rand(5, 1, 4, 4)
    torch.manual_seed(1)
    replay = elbo_terms(model, x)  # the same forward pass, to differentiate by hand
    ds = torch.autograd.grad((replay.recon_nll + replay.kl).mean(), replay.posterior.s)[0]
    torch.manual_seed(1)
    terms = elbo_terms(model, x)
    loss = (terms.recon_nll + terms.kl).mean()
    diagnostics.before_backward(0, terms.posterior)
    loss.backward()
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
    diagnostics.after_backward(0, total)
    before = model.encoder_sigma_head.weight.detach().clone(), \
        model.encoder_sigma_head.bias.detach().clone()
    grads = {name: torch.cat([p.grad.flatten() for p in params])
             for name, params in model.head_parameters().items()}
    optimizer.step()
    diagnostics.after_step(0)
    stats = {}
    for _, values in diagnostics.pending:
        stats.update({k: float(v) for k, v in values.items()})
    all_grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert stats["grad/norm_total"] == pytest.approx(all_grads.norm().item(), rel=1e-5)
    assert stats["grad/norm_mu_head"] == pytest.approx(grads["mu_head"].norm().item(), rel=1e-5)
    assert stats["grad/norm_sigma_head"] == pytest.approx(grads["sigma_head"].norm().item(),
                                                          rel=1e-5)
    assert stats["grad/norm_decoder_sigma"] == pytest.approx(
        grads["decoder_sigma"].norm().item(), rel=1e-5)
    assert stats["grad/sigma_mu_ratio"] == pytest.approx(
        grads["sigma_head"].norm().item() / grads["mu_head"].norm().item(), rel=1e-5)
    # SGD moves the σ head by lr·grad, so the update ratio is known in closed form.
    old = torch.cat([t.flatten() for t in before])
    assert stats["grad/update_ratio_sigma_head"] == pytest.approx(
        0.1 * grads["sigma_head"].norm().item() / old.norm().item(), rel=1e-4)
    # Per-example derivative: the loss is a batch mean, so scale by the batch size.
    assert stats["grad/dloss_ds_abs"] == pytest.approx(ds.abs().mean().item() * 5, rel=1e-5)
    tracker.close()


def test_snr_is_mean_over_std_across_the_window(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "model.hidden=[8]", "model.latent_dim=2", "log.grad_every=10",
                          "log.snr_window=3"])
    model = VAE(cfg, (1, 4, 4))
    tracker = Tracker(tmp_path)
    diagnostics = Diagnostics(model, cfg.log, tracker)
    weight, bias = model.encoder_sigma_head.weight, model.encoder_sigma_head.bias
    gradients = [torch.randn(weight.numel() + bias.numel()) for _ in range(3)]
    for step, gradient in enumerate(gradients, start=10):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        weight.grad = gradient[:weight.numel()].view_as(weight).clone()
        bias.grad = gradient[weight.numel():].clone()
        diagnostics.after_backward(step, torch.tensor(1.0))
    snr = [float(v) for _, stats in diagnostics.pending for k, v in stats.items()
           if k == "grad/snr_sigma_head"]
    stacked = torch.stack(gradients).double()
    expected = (stacked.mean(0).abs() / stacked.std(0)).mean().item()
    assert snr == [pytest.approx(expected, rel=1e-5)]
    tracker.close()


def test_saturating_map_reports_saturation_near_one(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "param=sigmoid_bounded", "param.sigma_min=0.5",
                          "param.sigma_max=0.5001", "trainer.epochs=1"])
    summary = train(cfg, tmp_path / "run", quiet=True)
    assert summary["posterior/saturated_frac"] > 0.99


def test_unbounded_map_has_no_saturation() -> None:
    sigma = torch.logspace(-6, 6, 50)
    assert saturated_fraction(sigma, (0.0, math.inf)).item() == 0.0
    assert saturated_fraction(sigma, (1e-6, math.inf)).item() == pytest.approx(1 / 50)


def test_diagnostics_off_writes_none_of_them(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "log.diagnostics=false", "trainer.epochs=1"])
    summary = train(cfg, tmp_path / "run", quiet=True)
    assert not any(tag.startswith(("grad/", "posterior/", "latent/")) for tag in summary)
    assert summary["status"] == "completed" and "test/elbo" in summary


def test_a_run_draws_its_figures_without_pyplot(tmp_path: Path) -> None:
    """pyplot would pick the machine's GUI backend (Qt, Tk) in every training job; the latent-usage
    figure reaches TensorBoard as an image all the same."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; import conftest; "
            "from vae_bench.train import train; "
            "cfg = conftest.compose_config(conftest.TINY + ['trainer.epochs=1']); "
            f"train(cfg, Path({str(tmp_path / 'run')!r}), quiet=True); "
            "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no pyplot')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).parent, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "no pyplot"
    image = event_accumulator(tmp_path / "run").Images("latent/kl_per_dim_sorted")[-1]
    assert (image.width, image.height) == (400, 200)
