#!/usr/bin/env python
"""Keep a study's finished runs in git, so that a sweep cut short by the end of a session goes
on from where it stopped on a fresh machine, whose outputs/ folder is empty.

  python scripts/study_records.py save outputs/findings/STUDY docs/findings/STUDY/runs
  python scripts/study_records.py restore docs/findings/STUDY/runs outputs/findings/STUDY

scripts/reproduce_findings.sh does both for every sweep (restore first, then save as runs
finish), so by hand these are needed only to record a sweep run some other way.

`save` writes a record of every finished job of a sweep folder: one whose summary.json says
completed or diverged. A record is the job's folder without what only training needs or what
is too large for git: config.yaml, .hydra/*.yaml, summary.json and train.log are copied, and
so is decoder_sigma.json where scripts/decoder_sigma_maps.py wrote one (its analysis of the
checkpoint); metrics.jsonl is compressed (metrics.jsonl.xz: a 300-epoch run logs megabytes); the
checkpoints are left out; the TensorBoard events are cut down to what `vae-bench report` reads
from them (the last `posterior/logvar` histogram). A job whose record already holds the same
summary.json (and analysis) is left as it is, so saving again changes nothing in git.

`restore` copies records back into a sweep folder, for jobs it does not hold yet (a folder that
is there, finished or not, is never touched). A sweep run into that folder then skips them, as
it skips any completed or diverged job, and `vae-bench report` reads them as runs. The records
folder is itself a folder of runs: `vae-bench report docs/findings/<study>/runs` works on it.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
import tempfile
from pathlib import Path

FINISHED = ("completed", "diverged")
COPIED = ("config.yaml", "summary.json", "train.log")
# Written beside a finished run by an analysis that needs the run's checkpoint, which records
# leave out: kept, so the analysis still has the run after a restore.
ANALYSES = ("decoder_sigma.json",)  # scripts/decoder_sigma_maps.py
METRICS = "metrics.jsonl"  # recorded as metrics.jsonl.xz, restored as it was
HISTOGRAM_THE_REPORT_READS = "posterior/logvar"
EVENTS_GLOB = "events.out.tfevents.*"


def job_folders(sweep: Path) -> list[Path]:
    """The sweep's job folders: those holding a config.yaml (every job writes one first). Hidden
    folders are Hydra's, submitit's or a save cut short."""
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / "config.yaml").is_file())


def finished_status(job: Path) -> str | None:
    try:
        status = json.loads((job / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if status in FINISHED else None


def last_event_of(job: Path, tag: str):
    """The last event holding `tag` in the job's event files (oldest file first), as written:
    read raw, so that nothing is converted on the way (a histogram stays a histogram)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    last = None
    for events in sorted(job.glob(EVENTS_GLOB)):
        for record in RawEventFileLoader(str(events)).Load():
            event = event_pb2.Event.FromString(record)
            if any(value.tag == tag for value in event.summary.value):
                last = event
    return last


def write_slim_events(job: Path, record: Path) -> bool:
    """An event file in `record` holding only the job's last histogram the report draws."""
    event = last_event_of(job, HISTOGRAM_THE_REPORT_READS)
    if event is None:
        return False
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    kept = [value for value in event.summary.value if value.tag == HISTOGRAM_THE_REPORT_READS]
    del event.summary.value[:]
    event.summary.value.extend(kept)
    writer = EventFileWriter(str(record), filename_suffix=".record")
    writer.add_event(event)
    writer.close()
    return True


def same_record(job: Path, record: Path) -> bool:
    """Whether the record already holds this finished run: the same summary, and every
    analysis written beside the run since."""
    def same(name: str) -> bool:
        saved = record / name
        return saved.is_file() and saved.read_bytes() == (job / name).read_bytes()

    return same("summary.json") and all(same(name) for name in ANALYSES
                                        if (job / name).is_file())


def save(sweep: Path, records: Path) -> dict[str, int]:
    counts = {"saved": 0, "unchanged": 0, "unfinished": 0}
    records.mkdir(parents=True, exist_ok=True)
    for staging in records.glob(".*.*"):  # what an earlier save left when it was cut short
        if staging.is_dir():
            shutil.rmtree(staging)
    if (sweep / "multirun.yaml").is_file():
        shutil.copy2(sweep / "multirun.yaml", records / "multirun.yaml")
    for job in job_folders(sweep):
        if finished_status(job) is None:
            counts["unfinished"] += 1
            continue
        record = records / job.name
        if same_record(job, record):
            counts["unchanged"] += 1
            continue
        # Written beside its final place and renamed: a record is never half there.
        staging = Path(tempfile.mkdtemp(prefix=f".{job.name}.", dir=records))
        staging.chmod(0o755)  # mkdtemp's is private; a record is as readable as its run
        for name in (*COPIED, *ANALYSES):
            if (job / name).is_file():
                shutil.copy2(job / name, staging / name)
        if (job / METRICS).is_file():
            with lzma.open(staging / f"{METRICS}.xz", "wb", preset=9) as packed:
                packed.write((job / METRICS).read_bytes())
        if (job / ".hydra").is_dir():
            (staging / ".hydra").mkdir()
            for yaml_file in (job / ".hydra").glob("*.yaml"):
                shutil.copy2(yaml_file, staging / ".hydra" / yaml_file.name)
        write_slim_events(job, staging)
        if record.exists():
            shutil.rmtree(record)
        staging.rename(record)
        counts["saved"] += 1
    return counts


def restore(records: Path, sweep: Path) -> dict[str, int]:
    counts = {"restored": 0, "already there": 0}
    sweep.mkdir(parents=True, exist_ok=True)
    for record in job_folders(records):
        job = sweep / record.name
        if job.exists():
            counts["already there"] += 1
            continue
        shutil.copytree(record, job, ignore=shutil.ignore_patterns(f"{METRICS}.xz"))
        if (record / f"{METRICS}.xz").is_file():
            (job / METRICS).write_bytes(lzma.decompress((record / f"{METRICS}.xz").read_bytes()))
        counts["restored"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    save_parser = commands.add_parser("save", help="record a sweep folder's finished jobs")
    save_parser.add_argument("sweep", type=Path)
    save_parser.add_argument("records", type=Path)
    restore_parser = commands.add_parser("restore", help="copy records into a sweep folder")
    restore_parser.add_argument("records", type=Path)
    restore_parser.add_argument("sweep", type=Path)
    args = parser.parse_args(argv)
    source = args.sweep if args.command == "save" else args.records
    if not source.is_dir():
        if args.command == "restore":  # nothing recorded yet: the sweep starts from scratch
            print(f"study_records: no records in {source}; nothing to restore")
            return 0
        print(f"study_records: error: {source} is not a folder", file=sys.stderr)
        return 2
    if args.command == "save":
        counts = save(args.sweep, args.records)
        where = args.records
    else:
        counts = restore(args.records, args.sweep)
        where = args.sweep
    print(f"study_records: {args.command} into {where}: "
          + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
