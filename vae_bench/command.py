"""The `vae-bench` command (and `python -m vae_bench`).

A sweep run from here starts its zygote before anything heavy is imported, so that the two
processes' imports overlap; then the CLI (cli.py) takes over.
"""

from __future__ import annotations

import os
import sys

from vae_bench import job_start


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    early = job_start.start_early(argv)
    from vae_bench import cli, jobs

    if early is not None:
        jobs.WorkerZygote.adopt(early)
    try:
        cli.main(argv)
    except BrokenPipeError:
        # The reader went away (`vae-bench --help | head`): end quietly, as Unix tools do,
        # without a traceback or the interpreter's own complaint when it flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
