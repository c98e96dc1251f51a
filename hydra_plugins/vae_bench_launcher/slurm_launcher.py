"""The class `hydra/launcher=slurm` names (configs/hydra/launcher/slurm.yaml). Hydra imports every
module under `hydra_plugins` when any app starts, so this one stays small: the work is in
vae_bench/slurm.py, imported only when a sweep is launched."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)


class SlurmLauncher(SubmititSlurmLauncher):
    """Hydra's submitit SLURM launcher, waiting for its jobs as vae_bench/slurm.py says. Its
    `__call__`, run by submitit on the node, is the plugin's own."""

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from vae_bench.slurm import launch

        return launch(self, job_overrides, initial_job_idx)
