"""One writer API for a run folder: TensorBoard events, metrics.jsonl and summary.json.

Nothing else in the project imports TensorBoard. Every scalar goes to both TensorBoard and
metrics.jsonl under the same tag, and its latest value is kept for summary.json.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# While a run is `running`, its summary's `heartbeat` (Unix time) is renewed this often, by a
# thread: it beats through long evaluations too. A heartbeat older than STALE_AFTER_S means the
# process is gone (10 missed beats: room for clock skew between nodes and a slow file system).
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
# TensorBoard opens on its groups in alphabetical order (grad/, health/, ... before test/ and
# train/), and no server setting changes that; this address opens the Scalars tab on the
# objective: the test/ and train/ tags.
OBJECTIVE_VIEW = "http://localhost:6006/#scalars&tagFilter=^(test|train)/"


def tensorboard_hint(folder: Path) -> str:
    return (f"vae-bench: TensorBoard: `tensorboard --logdir {folder}`, then open "
            f"{OBJECTIVE_VIEW} (the objective first)")


def atomic_write_text(path: Path, text: str) -> None:
    """Write beside the target, fsync, then rename: a crash leaves the old file readable."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def process_identity() -> dict:
    """Who writes a `running` summary: a run killed without a chance to write its end (SIGKILL,
    out of memory) stays `running`, and `process_gone` tells it apart by this."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def process_gone(summary: dict) -> bool:
    """Whether the process that wrote a `running` summary has ended without writing its end.
    On the host it ran on, the process table says; from another host (a cluster's other node),
    a heartbeat older than STALE_AFTER_S does."""
    pid, host = summary.get("pid"), summary.get("host")
    if host != socket.gethostname():
        return stale_since(summary) is not None
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def stale_since(summary: dict, now: float | None = None) -> float | None:
    """The last heartbeat (Unix time) of a `running` summary written on another host, if it is
    older than STALE_AFTER_S; None if it is fresh, absent, or from this host (see process_gone)."""
    beat = summary.get("heartbeat")
    if summary.get("host") == socket.gethostname() or not isinstance(beat, (int, float)):
        return None
    return beat if (time.time() if now is None else now) - beat > STALE_AFTER_S else None


def _json_number(value: float) -> float | str:
    # JSON has no NaN/Inf; strings keep them visible instead of breaking strict readers.
    return value if math.isfinite(value) else str(value)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


class Tracker:
    """Writes one run folder. `purge_step` drops anything logged at or after that step by an
    earlier, interrupted process (TensorBoard honours it, and metrics.jsonl is cut to match)."""

    def __init__(self, run_dir: Path, purge_step: int | None = None,
                 keep_records: int | None = None):
        """`keep_records` (from `state()` at the checkpoint) also drops records written after the
        checkpoint at steps below `purge_step`: diagnostics of the step after a checkpoint at step
        S are logged at step S."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.latest: dict[str, float] = {}
        self.epoch_seconds: list[float] = []
        self.records = 0  # lines in metrics.jsonl
        if purge_step is not None:
            self._truncate_metrics(purge_step, keep_records)
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)
        self._metrics = open(self.run_dir / METRICS_FILE, "a")
        self._summary_lock = threading.Lock()  # the heartbeat thread rewrites summary.json too
        self._running_summary: dict | None = None  # what the heartbeat renews
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _truncate_metrics(self, purge_step: int, keep_records: int | None) -> None:
        path = self.run_dir / METRICS_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        # Only the kept lines are parsed: a line cut short by a kill is never among them.
        lines = lines[:keep_records] if keep_records is not None else lines
        kept = [r for r in map(json.loads, filter(str.strip, lines)) if r["step"] < purge_step]
        self.records = len(kept)
        for record in kept:
            for tag, value in record.items():
                if tag not in ("step", "epoch", "time"):
                    self.latest[tag] = float(value)
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write_text(self.run_dir / METRICS_FILE, text)

    def scalars(self, values: dict[str, float], step: int, epoch: int | None = None) -> None:
        record: dict[str, Any] = {"step": step, "epoch": epoch}
        for tag, value in values.items():
            value = float(value)
            self.writer.add_scalar(tag, value, step)
            self.latest[tag] = value
            record[tag] = _json_number(value)
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        self.records += 1

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values.detach().float().cpu().numpy(), step)

    def image(self, tag: str, image_chw: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, image_chw.detach().float().cpu(), step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib Figure drawn off-screen: without pyplot (SummaryWriter.add_figure
        imports it, and with it whatever GUI backend the machine offers)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        rgb = np.asarray(canvas.buffer_rgba())[..., :3]
        self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def custom_scalars(self, layout: dict) -> None:
        self.writer.add_custom_scalars(layout)

    def hparams(self, hparams: dict[str, Any], metric_tags: list[str],
                varied: set[str] = frozenset()) -> None:
        """One hparams entry in this run's own folder (SummaryWriter.add_hparams would make a
        time-stamped sub-run instead). TensorBoard reads metric values from this run's scalars.
        Hyperparameters in `varied` are marked as differing between runs: TensorBoard lists those
        first, so the swept axes are the visible columns of its table."""
        metrics = {tag: self.latest.get(tag, float("nan")) for tag in metric_tags}
        experiment, session_start, session_end = hparams_summaries(hparams, metrics)
        metadata = experiment.value[0].metadata.plugin_data
        data = HParamsPluginData.FromString(metadata.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in varied
        metadata.content = data.SerializeToString()
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)

    def write_summary(self, status: str, **fields: Any) -> dict:
        summary: dict[str, Any] = {"status": status, **fields}
        if status == "running":
            summary.update(process_identity(), heartbeat=time.time())
        for tag, value in self.latest.items():
            summary[tag] = _json_number(value)
        if self.epoch_seconds:
            summary["train/epoch_seconds"] = statistics.median(self.epoch_seconds)
            summary["train/epoch_seconds_all"] = list(self.epoch_seconds)
        with self._summary_lock:
            self._running_summary = summary if status == "running" else None
            atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        if status == "running" and self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, name="vae-bench heartbeat",
                                               daemon=True)
            self._heartbeat.start()
        return summary

    def _beat(self) -> None:
        """Renew the heartbeat of a `running` summary until the run writes its end."""
        while not self._heartbeat_stop.wait(HEARTBEAT_S):
            with self._summary_lock:
                if self._running_summary is None:
                    continue
                self._running_summary["heartbeat"] = time.time()
                text = json.dumps(self._running_summary, indent=2) + "\n"
                try:
                    atomic_write_text(self.run_dir / SUMMARY_FILE, text)
                except OSError:  # a full or vanished disk: the training reports that itself
                    pass

    def flush(self) -> None:
        self.writer.flush()
        self._metrics.flush()

    def close(self) -> None:
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)  # at most one summary write away
        self.writer.close()
        self._metrics.close()

    def state(self) -> dict:
        return {"epoch_seconds": list(self.epoch_seconds), "metrics_records": self.records}

    def load_state(self, state: dict) -> None:
        self.epoch_seconds = list(state["epoch_seconds"])
