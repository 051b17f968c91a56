"""Where metrics go: metrics.jsonl (one complete JSON object per line), TensorBoard, and the console.

A line is written with a single write and fsync'd, so a crash leaves only complete lines behind.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


class MetricsLogger:
    """Appends to output_dir/metrics.jsonl. purge_step (a resumed run): TensorBoard hides the events the
    interrupted run had written from that step on, as metrics.jsonl was cut back to its checkpoint."""

    def __init__(self, output_dir: Path, tensorboard: bool = True, purge_step: int | None = None):
        self.path = output_dir / "metrics.jsonl"
        self.lines = self.path.read_bytes().count(b"\n") if self.path.exists() else 0
        self.file = open(self.path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=purge_step)

    def position(self) -> tuple[int, int]:
        """(complete lines, bytes) written so far: where a resumed run cuts the file back to."""
        return self.lines, os.fstat(self.file.fileno()).st_size

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{key: _plain(value) for key, value in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.lines += 1
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _plain(value):
    """Tensors and numpy scalars to Python numbers; non-finite floats to null-free strings JSON accepts."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def console(message: str) -> None:
    print(message, file=sys.stdout, flush=True)


class Progress:
    """A live progress bar on a terminal (tqdm); plain log lines every `every` steps otherwise (CI, files)."""

    def __init__(self, total: int, every: int = 10, start: int = 0):
        self.total, self.every = total, every
        self.bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def step(self, step: int, summary: dict[str, str], eta_seconds: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(summary, refresh=False)
            self.bar.update(1)
        elif step % self.every == 0 or step == self.total or step == 1:
            fields = "  ".join(f"{key} {value}" for key, value in summary.items())
            console(f"step {step:4d}/{self.total}  {fields}  eta {eta_seconds:.0f}s")

    def write(self, message: str) -> None:
        """A line that does not break the bar."""
        if self.bar is not None:
            self.bar.write(message)
        else:
            console(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
