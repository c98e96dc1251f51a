"""scripts/decoder_sigma_maps.py on a real (tiny) sweep: a density's per-pixel log-density is
unbounded at σₓ → 0, a discretized likelihood's log-probability never exceeds 0."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_cli

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
SCRIPT = SCRIPTS / "decoder_sigma_maps.py"


def sigma_maps(*sweeps: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, sweeps), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_decoder_sigma_maps_reads_densities_and_probabilities(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    variants = (
        "decoder_bounded_pixel_softplus_std,decoder_variance_pixel_logvar,decoder_bounded_fixed")
    result = run_cli(["train", "-m", *TINY, "trainer.epochs=1", f"variant={variants}",
                      f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "maps"
    maps = sigma_maps(sweep, out=out)
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


@pytest.mark.slow
def test_a_run_restored_from_its_record_keeps_its_decoder_sigma_row(tmp_path: Path) -> None:
    """The analysis reads checkpoints, which study records leave out: each run's row is kept in
    its folder and its record, so that on a fresh machine (records restored, no checkpoints)
    the script gives the same table. Colour images give a map of their mean over channels."""
    spec = importlib.util.spec_from_file_location("study_records", SCRIPTS / "study_records.py")
    study_records = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_records)
    sweep = tmp_path / "outputs" / "cifar_like"
    result = run_cli(["train", "-m", *TINY, "trainer.epochs=1", "dataset.channels=3",
                      "dataset.image_size=8", "variant=decoder_bounded_pixel_softplus_std",
                      "seed=0,1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first = sigma_maps(sweep, out=tmp_path / "first")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads((tmp_path / "first" / "decoder_sigma.json").read_text())
    assert [row["channels"] for row in rows] == [3, 3]
    for row in rows:
        kept = json.loads((sweep / row["run"] / "decoder_sigma.json").read_text())
        assert {k: v for k, v in kept.items() if k != "mean_log10_sigma_x"} == row
        image = kept["mean_log10_sigma_x"]  # one 8×8 panel: the channels averaged
        assert len(image) == 8 and all(len(line) == 8 for line in image)
    # The two seeds are two runs on two synthetic draws: their analyses differ.
    assert rows[0]["recon_log_density"] != rows[1]["recon_log_density"]

    # A kept row from the same checkpoint (the same step) is reused, not recomputed; one from
    # another step is recomputed. Marked rows show which happened.
    marked, stale = (sweep / row["run"] / "decoder_sigma.json" for row in rows)
    for path, step_shift in ((marked, 0), (stale, 1)):
        row = json.loads(path.read_text())
        path.write_text(json.dumps({**row, "sigma_x_min": -1.0,
                                    "checkpoint_step": row["checkpoint_step"] + step_shift}))
    reused = sigma_maps(sweep, out=tmp_path / "reused")
    assert reused.returncode == 0, reused.stderr[-3000:]
    minima = [row["sigma_x_min"] for row in
              json.loads((tmp_path / "reused" / "decoder_sigma.json").read_text())]
    assert minima == [-1.0, rows[1]["sigma_x_min"]]
    marked.unlink()  # the true row again, for what follows
    assert sigma_maps(sweep, out=tmp_path / "first").returncode == 0
    assert json.loads((tmp_path / "first" / "decoder_sigma.json").read_text()) == rows

    records = tmp_path / "docs" / "cifar_like" / "runs"
    study_records.save(sweep, records)
    assert all((records / row["run"] / "decoder_sigma.json").is_file() for row in rows)
    fresh = tmp_path / "fresh" / "cifar_like"
    study_records.restore(records, fresh)
    assert not list(fresh.rglob("*.pt"))  # as on a fresh machine: no checkpoints
    again = sigma_maps(fresh, out=tmp_path / "again")
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("decoder_sigma.json", "decoder_sigma.md"):
        assert (tmp_path / "again" / name).read_text() == (tmp_path / "first" / name).read_text()

    # Without its checkpoint or its kept row, a run has nothing to read: it is left out, loudly
    # when that leaves nothing.
    for row in rows:
        (fresh / row["run"] / "decoder_sigma.json").unlink()
    none = sigma_maps(fresh, out=tmp_path / "none")
    assert none.returncode != 0 and "no run with a learned decoder" in none.stderr
    shutil.rmtree(fresh)
