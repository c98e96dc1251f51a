"""What the zygote tests ask a zygote to run in its forked children (imported by the zygote)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def parent_state(argv: list[str]) -> None:
    """Write how many threads the zygote (this child's parent) runs, whether it imported the
    training code, and which vae_bench that is."""
    threads = len(os.listdir(f"/proc/{os.getppid()}/task"))
    imported = all(name in sys.modules for name in ("torch", "vae_bench.train"))
    Path(argv[0]).write_text(f"{threads} {imported} {sys.modules['vae_bench'].__file__}")


def wait_for_sigterm(argv: list[str]) -> None:
    """Exit 7 on SIGTERM, after writing which signal came; `argv[0]` appears once ready."""
    def on_term(signum, frame):
        Path(argv[0] + ".signal").write_text(signal.Signals(signum).name)
        sys.exit(7)

    signal.signal(signal.SIGTERM, on_term)
    Path(argv[0]).touch()
    time.sleep(120)


def imports_of_a_job(argv: list[str]) -> None:
    """Run a job (vae_bench.jobs.child_main's arguments after the report file) and write the
    modules it imported that the zygote had not."""
    from vae_bench.jobs import child_main

    before = set(sys.modules)
    child_main(argv[1:])
    Path(argv[0]).write_text("\n".join(sorted(set(sys.modules) - before)))
