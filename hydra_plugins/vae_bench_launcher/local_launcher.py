"""The class `hydra/launcher=local` names (configs/hydra/launcher/local.yaml), vae-bench's default
launcher: Hydra's basic launcher (one job at a time, from this process), which composes the next
job's config while the current job trains. A job trains in a child process (vae_bench/jobs.py),
so this process only waits meanwhile; Hydra's composition of a config (~0.1-0.2 s) then costs
a sweep nothing but an idle core's time."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def composes_alike_in_any_thread(config: DictConfig) -> bool:
    """Composing reads the working folder and, for `hydra.job.env_copy`, the environment; a job
    that runs in its own folder (`hydra.job.chdir`) or sets variables (`env_set`) changes them
    while it runs, so such sweeps compose each job's config just before it, as Hydra does."""
    job = config.hydra.job
    return not job.chdir and not job.env_copy and not job.env_set


class LocalLauncher(BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        if not composes_alike_in_any_thread(self.config):
            return super().launch(job_overrides, initial_job_idx)
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        loader, master = self.hydra_context.config_loader, self.config
        runs: list[JobReturn] = []
        # One composing thread: Hydra's config loader is only ever used by one thread at once.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="compose") as composer:
            def compose(position: int) -> Future:
                return composer.submit(loader.load_sweep_config, master,
                                       list(job_overrides[position]))

            upcoming = compose(0) if job_overrides else None
            for position, overrides in enumerate(job_overrides):
                idx = initial_job_idx + position
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                assert upcoming is not None
                sweep_config = upcoming.result()
                upcoming = compose(position + 1) if position + 1 < len(job_overrides) else None
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = idx
                    sweep_config.hydra.job.num = idx
                runs.append(run_job(hydra_context=self.hydra_context,
                                    task_function=self.task_function, config=sweep_config,
                                    job_dir_key="hydra.sweep.dir",
                                    job_subdir_key="hydra.sweep.subdir"))
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs
