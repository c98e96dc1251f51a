"""Property: any override set drawn from the schema (good and bad values, wrong types, unknown and
misspelled keys and choices, with and without `+`) is either accepted and trains, or refused as a
user error (exit 2) whose message names a key. Never anything else. A longer run:
`python scripts/stress.py --fuzz 500`."""

from __future__ import annotations

import math

from fuzzing import names_a_key, outcome_of, override_sets, train_accepted
from hypothesis import HealthCheck, given, settings

TRAINED_AT_MOST = 3  # accepted sets that really train; the others are composed and checked only


def test_override_sets_are_accepted_or_refused_with_a_key(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VAE_BENCH_DATA", str(tmp_path / "no_data"))  # no real data set is read
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    trained = []

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(override_sets)
    def check(overrides: list[str]) -> None:
        outcome = outcome_of(overrides)
        if not outcome.accepted:
            assert names_a_key(outcome.message, overrides), (overrides, outcome.message)
            assert "\n" not in outcome.message.strip()
            return
        if len(trained) < TRAINED_AT_MOST:
            summary = train_accepted(overrides, tmp_path / f"run{len(trained)}")
            assert summary["status"] in ("completed", "diverged"), (overrides, summary)
            if summary["status"] == "completed":
                assert math.isfinite(summary["test/elbo"]) or summary["test/elbo"] is None
            trained.append(overrides)

    check()
    assert trained, "no drawn set was accepted: the strategy draws only mistakes"
