"""scripts/decoder_sigma_maps.py on a real (tiny) sweep: a density's per-pixel log-density is
unbounded at σₓ → 0, a discretized likelihood's log-probability never exceeds 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_cli

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "decoder_sigma_maps.py"


@pytest.mark.slow
def test_decoder_sigma_maps_reads_densities_and_probabilities(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    variants = (
        "decoder_bounded_pixel_softplus_std,decoder_variance_pixel_logvar,decoder_bounded_fixed")
    result = run_cli(["train", "-m", *TINY, "trainer.epochs=1", f"variant={variants}",
                      f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "maps"
    maps = subprocess.run([sys.executable, str(SCRIPT), str(sweep), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert maps.returncode == 0, maps.stderr[-3000:]
    rows = {row["variant"]: row for row in json.loads((out / "decoder_sigma.json").read_text())}
    # σₓ fixed has no map to read: only the two learned variants are analysed.
    assert set(rows) == {"variant=decoder_bounded_pixel_softplus_std",
                         "variant=decoder_variance_pixel_logvar"}
    bounded = rows["variant=decoder_bounded_pixel_softplus_std"]
    density = rows["variant=decoder_variance_pixel_logvar"]
    assert bounded["max_log_density_per_pixel"] == 0.0
    assert bounded["recon_log_density"] <= 0.0  # log-probabilities of 8-bit values
    assert density["max_log_density_per_pixel"] == float("inf")  # logvar has no floor
    assert bounded["dataset"] == density["dataset"] == "synthetic"
    assert (out / "decoder_sigma.png").stat().st_size > 0
    assert "decoder_bounded_pixel_softplus_std" in (out / "decoder_sigma.md").read_text()
