"""Errors a user can fix, and how a run that met one is recorded.

Below both the CLI (which refuses a bad command line with exit 2) and a sweep job's training
process (which records the error in its run folder and lets the sweep go on): both need them,
and neither may import the other.
"""

from __future__ import annotations

import json
from pathlib import Path

from vae_bench.checkpoints import CheckpointError
from vae_bench.config import ConfigError
from vae_bench.data import DataError
from vae_bench.tracking import SUMMARY_FILE, atomic_write_text

# A bad config, data that cannot be read, no usable checkpoint, an output folder not writable.
USER_ERRORS = (ConfigError, DataError, CheckpointError, PermissionError)


def record_failure(run_dir: Path, error: BaseException) -> None:
    """Where the report looks: the run's summary.json says `failed` and why."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / SUMMARY_FILE,
                          json.dumps({"status": "failed", "error": str(error)}, indent=2) + "\n")
    except OSError:  # an unwritable folder is the error itself; the caller logs it
        pass
