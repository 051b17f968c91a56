"""Where metrics go: metrics.jsonl (one complete JSON object per line), the loggers of `--report-to`
(TensorBoard, Weights & Biases, trackio), and the console.

A line of metrics.jsonl is written with a single write and fsync'd, so a crash leaves only complete lines
behind. metrics.jsonl is always written; the loggers receive the same numbers (every number of a record), the
run's resolved settings as their config, the health alerts as text, and a table of sample completions at
each evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

from r1zero import metric_names as names

LOGGERS = ("tensorboard", "wandb", "trackio")  # the choices of --report-to, besides "none"
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}  # what each imports
SAMPLES_LOGGED = 8  # completions per evaluation in the loggers' sample table (all of them are in samples/)
SAMPLE_COLUMNS = ("step", "problem_id", "sample_index", "completion", "answer", "correct")


class MetricsLogger:
    """Appends to output_dir/metrics.jsonl and forwards every record to the loggers named in report_to.
    purge_step (a resumed run): TensorBoard hides the events the interrupted run had written from that step on,
    as metrics.jsonl was cut back to its checkpoint."""

    def __init__(self, output_dir: Path, report_to=("tensorboard",), purge_step: int | None = None,
                 project: str = "r1zero", run_name: str = "", settings: dict | None = None):
        self.path = output_dir / "metrics.jsonl"
        self.lines = self.path.read_bytes().count(b"\n") if self.path.exists() else 0
        self.file = open(self.path, "a", encoding="utf-8")
        name = run_name or output_dir.name
        makers = {"tensorboard": lambda: TensorBoardLogger(output_dir, purge_step, settings or {}),
                  "wandb": lambda: WandbLogger(output_dir, project, name, settings or {}, resumed=purge_step is not None),
                  "trackio": lambda: TrackioLogger(project, name, settings or {}, resumed=purge_step is not None)}
        self.loggers = [makers[logger]() for logger in report_to if logger in makers]

    def position(self) -> tuple[int, int]:
        """(complete lines, bytes) written so far: where a resumed run cuts the file back to."""
        return self.lines, os.fstat(self.file.fileno()).st_size

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{key: _plain(value) for key, value in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.lines += 1
        numbers = {key: float(value) for key, value in metrics.items() if _is_number(value)}
        alerts = metrics.get(names.ALERTS) or []
        for logger in self.loggers:
            logger.log(step, numbers)
            for alert in alerts:
                logger.alert(step, alert["name"], alert["message"])

    def samples(self, step: int, records: list[dict]) -> None:
        """A table of the first SAMPLES_LOGGED sample completions of an evaluation (r1zero.evaluation records)."""
        rows = [[step, *(record[column] for column in SAMPLE_COLUMNS[1:])] for record in records[:SAMPLES_LOGGED]]
        for logger in self.loggers:
            logger.samples(step, rows)

    def close(self) -> None:
        self.file.close()
        for logger in self.loggers:
            logger.close()


def _is_number(value) -> bool:
    """A real number: an int or float (not a bool), or a 0-d tensor or numpy scalar; not text or lists."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) or (hasattr(value, "item") and getattr(value, "ndim", 1) == 0)


class TensorBoardLogger:
    """Scalars as TensorBoard events in output_dir/tensorboard/ (finite values only: TensorBoard draws no NaN);
    the settings, alerts and samples as text."""

    def __init__(self, output_dir: Path, purge_step: int | None, settings: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=purge_step)
        if purge_step is None:
            self.writer.add_text("settings", "\n".join(f"    {key}: {value}" for key, value in settings.items()), 0)

    def log(self, step: int, numbers: dict[str, float]) -> None:
        for key, value in numbers.items():
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def alert(self, step: int, name: str, message: str) -> None:
        self.writer.add_text(f"alerts/{name}", message, step)

    def samples(self, step: int, rows: list[list]) -> None:
        header = "| " + " | ".join(SAMPLE_COLUMNS) + " |\n|" + " --- |" * len(SAMPLE_COLUMNS)
        lines = ["| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |"
                 for row in rows]
        self.writer.add_text("samples", "\n".join([header, *lines]), step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run in output_dir/wandb/ (online, or offline with WANDB_MODE=offline: `wandb sync`
    uploads it later). A resumed r1zero run continues the same W&B run: its id is made from the output folder."""

    def __init__(self, output_dir: Path, project: str, name: str, settings: dict, resumed: bool):
        import wandb

        self.wandb = wandb
        run_id = hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=project, name=name, id=run_id, dir=str(output_dir), config=settings,
                              resume="allow" if resumed else None)
        self.alerts: list[list] = []

    def log(self, step: int, numbers: dict[str, float]) -> None:
        self.run.log(numbers, step=step)

    def alert(self, step: int, name: str, message: str) -> None:
        self.alerts.append([step, name, message])  # every alert so far: a W&B table is logged whole
        self.run.log({names.ALERTS: self.wandb.Table(columns=["step", "name", "message"], data=self.alerts)},
                     step=step)

    def samples(self, step: int, rows: list[list]) -> None:
        self.run.log({"eval/samples": self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioLogger:
    """A trackio run in its local store (TRACKIO_DIR, by default ~/.cache/huggingface/trackio; `trackio show`
    opens the dashboard). Alerts are trackio alerts; samples a trackio table."""

    def __init__(self, project: str, name: str, settings: dict, resumed: bool):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=project, name=name, config=settings, resume="allow" if resumed else "never")

    def log(self, step: int, numbers: dict[str, float]) -> None:
        self.run.log(numbers, step=step)

    def alert(self, step: int, name: str, message: str) -> None:
        self.trackio.alert(title=f"{name} (step {step})", text=message)

    def samples(self, step: int, rows: list[list]) -> None:
        self.run.log({"eval/samples": self.trackio.Table(columns=list(SAMPLE_COLUMNS), data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


def _plain(value):
    """Tensors and numpy scalars to Python numbers; non-finite floats to null-free strings JSON accepts."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def quiet_libraries() -> None:
    """Silence the progress bars transformers and huggingface_hub print when they load or save weights ("Loading
    weights", "Writing model shards"), so that a run prints r1zero's own lines only, on a terminal and in logs."""
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


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
