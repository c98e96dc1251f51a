"""Evaluation along the way (eval.iwae_every as an interval or a list of epochs, eval.iwae_k_final),
the per-epoch latent statistics (active units, σ near a bound, σ's test percentiles), and the
experiment=long_horizon preset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import TINY, compose_config
from omegaconf import OmegaConf

from vae_bench.config import ConfigError
from vae_bench.diagnostics import SIGMA_PERCENTILES
from vae_bench.parameterizations import SIGMA_MAPS
from vae_bench.tracking import read_metrics
from vae_bench.train import iwae_due, train
from vae_bench.validation import validate

PERCENTILE_TAGS = [f"posterior/test_sigma_p{p}" for p in SIGMA_PERCENTILES]


def epochs_with(run_dir: Path, tag: str) -> list[int]:
    return [r["epoch"] for r in read_metrics(run_dir) if tag in r]


@pytest.mark.parametrize(("every", "expected"), [
    (0, []), (1, [1, 2, 3, 4, 5, 6]), (2, [2, 4, 6]), (4, [4]),
    ([1, 3], [1, 3]), ([5, 100], [5]), ([], [])])
def test_iwae_due_for_an_interval_or_a_list(every, expected) -> None:
    assert [epoch for epoch in range(1, 7) if iwae_due(every, epoch)] == expected
    listed = OmegaConf.create({"every": every}).every  # as the config holds it
    assert [epoch for epoch in range(1, 7) if iwae_due(listed, epoch)] == expected


@pytest.fixture(scope="module")
def listed_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("horizon") / "run"
    cfg = compose_config([*TINY, "trainer.epochs=4", "eval.iwae_every=[1,3,30]",
                          "eval.iwae_k_final=9"])
    return run_dir, train(cfg, run_dir, quiet=True)


def test_iwae_at_the_listed_epochs_and_the_end_with_a_final_k(listed_run) -> None:
    run_dir, summary = listed_run
    assert epochs_with(run_dir, "test/nll_iwae") == [1, 3, 4]
    assert epochs_with(run_dir, "test/nll_iwae_final") == [4]
    assert epochs_with(run_dir, "test/elbo") == [1, 2, 3, 4]
    assert summary["eval/iwae_k"] == 4 and summary["eval/iwae_k_final"] == 9
    assert summary["eval/iwae_final_seconds"] > 0
    # Two estimates of the same NLL from different samples and k: close, not the same number.
    final, along = summary["test/nll_iwae_final"], summary["test/nll_iwae"]
    assert final != along
    assert abs(final - along) < 0.05 * abs(along)
    # Both bound the NLL from above no worse than the ELBO does, up to sampling noise.
    assert final < -summary["test/elbo"] + 1.0


def test_interval_and_no_final_k_as_before(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "trainer.epochs=4", "eval.iwae_every=3"])
    summary = train(cfg, tmp_path, quiet=True)
    assert epochs_with(tmp_path, "test/nll_iwae") == [3, 4]
    assert not epochs_with(tmp_path, "test/nll_iwae_final")
    assert "eval/iwae_k_final" not in summary and "test/nll_iwae_final" not in summary


def test_latent_statistics_every_epoch(listed_run) -> None:
    run_dir, summary = listed_run
    tags = ["latent/active_units", "posterior/test_saturated_frac", *PERCENTILE_TAGS]
    for tag in tags:
        assert epochs_with(run_dir, tag) == [1, 2, 3, 4], tag
    for record in read_metrics(run_dir):
        if "posterior/test_sigma_p1" in record:
            percentiles = [record[tag] for tag in PERCENTILE_TAGS]
            assert percentiles == sorted(percentiles) and percentiles[0] > 0
            assert 0.0 <= record["posterior/test_saturated_frac"] <= 1.0
            assert 0 <= record["latent/active_units"] <= 20
    # The last epoch's σ percentiles are those of the whole log σ distribution in the summary.
    log_sigma = summary["posterior/test_log_sigma_percentiles"]
    for p, tag in zip(SIGMA_PERCENTILES, PERCENTILE_TAGS):
        assert summary[tag] == pytest.approx(math.exp(log_sigma[p]), rel=1e-12)


def test_test_set_saturation_near_one_for_a_pinned_map(tmp_path: Path) -> None:
    """σ pinned between 0.5 and 0.5001 lies within 1% of both bounds: all of it saturated."""
    cfg = compose_config([*TINY, "param=sigmoid_bounded", "param.sigma_min=0.5",
                          "param.sigma_max=0.5001", "trainer.epochs=1"])
    summary = train(cfg, tmp_path, quiet=True)
    assert summary["posterior/test_saturated_frac"] == 1.0
    assert summary["posterior/test_sigma_p1"] == pytest.approx(0.5, rel=1e-3)


def test_unbounded_map_has_no_test_saturation(listed_run) -> None:
    _, summary = listed_run  # logvar: σ in (0, ∞)
    assert summary["posterior/test_saturated_frac"] == 0.0


@pytest.mark.parametrize(("override", "words"), [
    ("eval.iwae_every=-1", "eval.iwae_every=-1 must be a whole number >= 0"),
    ("eval.iwae_every=1.5", "eval.iwae_every=1.5 must be a whole number >= 0"),
    ("eval.iwae_every=true", "eval.iwae_every=true must be a whole number >= 0"),
    ("eval.iwae_every=abc", "eval.iwae_every=abc must be a whole number >= 0"),
    ("eval.iwae_every=null", "eval.iwae_every=null must be a whole number >= 0"),
    ("eval.iwae_every=[10,0]", "eval.iwae_every=[10,0]: the epochs listed must be whole numbers"),
    ("eval.iwae_every=[10,x]", "eval.iwae_every=[10,x]: the epochs listed must be whole numbers"),
    ("eval.iwae_k_final=0", "eval.iwae_k_final=0 must be >= 1"),
])
def test_bad_iwae_settings_are_refused(override: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_config(["dataset=synthetic", override]))
    assert words in str(info.value)
    assert str(info.value).count("eval.") <= 3  # only the value at fault, and its fix


@pytest.mark.parametrize("override", ["eval.iwae_every=0", "eval.iwae_every=5",
                                      "eval.iwae_every=[]", "eval.iwae_every=[300,10]",
                                      "eval.iwae_k_final=5000", "eval.iwae_k_final=null"])
def test_good_iwae_settings_pass(override: str) -> None:
    validate(compose_config(["dataset=synthetic", override]))


def test_long_horizon_preset() -> None:
    cfg = compose_config(["experiment=long_horizon"])
    validate(cfg)
    assert cfg.model.name == "mlp_iwae" and cfg.model.latent_dim == 50
    assert cfg.dataset.name == "binarized_mnist" and cfg.dataset.binarize
    assert cfg.optim.name == "adam" and cfg.optim.schedule == "burda"
    assert cfg.trainer.epochs >= 300
    assert list(cfg.eval.iwae_every) == [10, 30, 100, 300] and cfg.eval.iwae_k == 100
    assert cfg.eval.iwae_k_final == 5000 and cfg.eval.iwae_max_examples is None
    preset = OmegaConf.load(Path(__file__).parents[1] / "configs/experiment/long_horizon.yaml")
    params = preset.hydra.sweeper.params
    assert set(params.param.split(",")) == set(SIGMA_MAPS)
    assert params.seed.split(",") == ["0", "1", "2"]


def test_summary_json_holds_the_new_fields(listed_run) -> None:
    run_dir, _ = listed_run
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert {"test/nll_iwae_final", "eval/iwae_k_final", "posterior/test_saturated_frac",
            *PERCENTILE_TAGS} <= set(on_disk)


def test_a_saved_config_with_listed_epochs_merges_for_resume() -> None:
    """`vae-bench resume` merges config.yaml onto the schema: the list must survive it."""
    from vae_bench.config import run_schema

    saved = OmegaConf.create(OmegaConf.to_container(compose_config(
        [*TINY, "eval.iwae_every=[1,3,30]", "eval.iwae_k_final=9", "optim.schedule=burda"]),
        resolve=True))
    cfg = OmegaConf.merge(run_schema(saved), saved)
    validate(cfg)
    assert list(cfg.eval.iwae_every) == [1, 3, 30] and cfg.eval.iwae_k_final == 9
    assert cfg.optim.schedule == "burda"
