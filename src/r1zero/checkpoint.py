"""Checkpoints that hold everything a run needs to continue exactly, written atomically.

    r1zero train --checkpoint-every 40 --output-dir runs/x     # DIR/checkpoints/step_000040/, step_000080/, ...
    r1zero train --resume runs/x                               # continues from the newest complete one

Layout of one checkpoint, DIR/checkpoints/step_000040/:
    config.json, model.safetensors, generation_config.json, tokenizer files   (save_pretrained: a checkpoint is
                                                                               also a loadable Hugging Face model)
    trainer_state.pt   a `TrainingState`: the step, optimizer and scheduler state, every RNG state (Python,
                       NumPy, torch, CUDA, the trainer's own generators), the data position, the health
                       monitor's state, and how much of metrics.jsonl had been written at that step.
    optimizer/         with FSDP learner ranks only: each rank's shards of the optimiser state
                       (torch.distributed.checkpoint: .metadata and one __<rank>_0.distcp file a rank), which
                       trainer_state.pt then leaves out (optimizer_shards says how many ranks wrote them); no
                       process ever holds the whole state.

Atomic: everything is written into a hidden staging folder (.step_000040.partial) that is renamed to
step_000040 only when complete, so a crash at any moment leaves either the whole checkpoint or none of it.
Only folders named step_<digits> count; the newest `keep` are kept, older ones are renamed away before being
deleted, so a half-deleted folder never looks like a checkpoint either.

On resume, metrics.jsonl is cut back to the byte offset recorded in the checkpoint (`rewind_metrics`): lines a
killed run wrote after its last checkpoint are dropped and written again by the resumed run, without
duplicates or gaps.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from r1zero.config import RESUME_SETTINGS, ConfigError, TrainConfig, flag_name, load_config

STATE_FILE = "trainer_state.pt"
SHARDS_FOLDER = "optimizer"  # FSDP ranks' shards of the optimiser state (torch.distributed.checkpoint)
STATE_FORMAT = 1  # bumped when TrainingState changes incompatibly
_CHECKPOINT_NAME = re.compile(r"step_(\d{6,})")



class CheckpointError(ValueError):
    """A checkpoint (or the metrics file it points into) that cannot be written or read; the message names the
    file and what to do."""


class TrainingStopped(RuntimeError):
    """The run stopped itself (too many non-finite steps); the message is the diagnosis."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM: the current step was finished and a checkpoint saved; `exit_code` is 128 + signal."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


@dataclass
class TrainingState:
    """Everything besides the weights that a resumed run needs to continue as if never stopped."""

    step: int  # the last completed training step
    optimizer: dict  # optimizer.state_dict(): AdamW moments and step counts
    scheduler: dict  # scheduler.state_dict(): the learning-rate schedule's position
    problems: dict  # ProblemSource.state_dict(): its random.Random and the current epoch's order
    health: dict  # HealthMonitor.state_dict(): streaks, active alerts, KL history
    generators: dict[str, torch.Tensor]  # name -> torch.Generator.get_state() of the trainer's own generators
    global_rng: dict  # capture_global_rng(): Python, NumPy, torch CPU and CUDA states
    metrics_lines: int  # complete lines of metrics.jsonl at this step
    metrics_bytes: int  # its size in bytes at this step: where a resumed run cuts it back to
    format: int = STATE_FORMAT
    critic: dict | None = None  # PPO: the value model's weights and its optimizer state
    # FSDP: how many learner ranks wrote their shards of the optimiser state into SHARDS_FOLDER; `optimizer` then
    # holds the driver's optimizer, which carries only the learning-rate schedule. 0: `optimizer` is all of it.
    optimizer_shards: int = 0
    # asynchronous training: the batches generated but not yet trained on (StepBatch.state_dict, in step order),
    # which a resumed run trains on first
    in_flight: list | None = None

    def restore(self, optimizer, scheduler, problems, health, generators: dict[str, torch.Generator]) -> None:
        """Load this state into freshly built training objects (the weights are loaded from the folder)."""
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(self.scheduler)
        problems.load_state_dict(self.problems)
        health.load_state_dict(self.health)
        if set(generators) != set(self.generators):
            raise CheckpointError(f"checkpoint has generators {sorted(self.generators)}, the trainer "
                                  f"{sorted(generators)}: it was written by a different version of r1zero")
        for name, generator in generators.items():
            generator.set_state(self.generators[name])
        restore_global_rng(self.global_rng)


def capture_global_rng() -> dict:
    """The process-wide random states: Python's `random`, NumPy's legacy global, torch CPU and CUDA."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), position, has_gauss, cached_gaussian),
            "torch": torch.get_rng_state(), "cuda": cuda}


def restore_global_rng(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------------------------------------
# Writing, finding and reading checkpoints


def checkpoint_folder(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def save_checkpoint(run_dir: str | Path, state: TrainingState, model, tokenizer, keep: int,
                    write_shards=None) -> Path:
    """Write DIR/checkpoints/step_<state.step>/ atomically, then delete all but the newest `keep`; returns it.
    write_shards(folder): writes the FSDP ranks' optimiser shards into the staging checkpoint's SHARDS_FOLDER.

    Refuses (CheckpointError) weights that are not finite, so a checkpoint is always a state worth resuming.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    bad = [name for name, parameter in model.named_parameters() if not torch.isfinite(parameter).all()]
    if bad:
        raise CheckpointError(f"refusing to checkpoint step {state.step}: parameters {', '.join(bad[:3])} hold "
                              f"NaN or infinity; the newest checkpoint stays the last good state")
    folder = checkpoint_folder(run_dir, state.step)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.partial")
    for leftover in folder.parent.glob(".step_*"):  # partial writes and deletions a crash interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}  # asdict would deep-copy
    torch.save(fields, staging / STATE_FILE)
    if write_shards is not None:
        write_shards(staging / SHARDS_FOLDER)
        if missing := missing_shards(staging / SHARDS_FOLDER):
            raise CheckpointError(f"{staging / SHARDS_FOLDER}: the learner ranks' files {', '.join(missing)} are not "
                                  f"there; with ranks on several machines the output folder must be on a file system "
                                  f"they all see")
    for path in [*sorted(staging.rglob("*"), reverse=True), staging]:  # on disk before the rename shows it
        _fsync(path)
    if folder.exists():  # the same step saved again: move the old one out of the way first
        _remove(folder)
    os.replace(staging, folder)
    _fsync(folder.parent)
    for old in list_checkpoints(run_dir)[:-keep]:
        _remove(old)
    return folder


def _with_dcp(operation, state: dict, folder: str) -> None:
    """torch.distributed.checkpoint's save or load of `state` at `folder`: across the process group when there is
    one, else in this process alone (whose notice that it assumes so is silenced: that is what is meant)."""
    import torch.distributed as dist

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        operation(state, checkpoint_id=folder, no_dist=not dist.is_initialized())


def save_optimizer_shards(model, optimizer, folder: str) -> None:
    """This process's part of the optimiser state, keyed by parameter name, into `folder` with
    torch.distributed.checkpoint (DCP): on FSDP ranks each writes its own shards (every rank calls this together;
    rank 0 also writes the index, .metadata), so nothing is gathered anywhere."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    _with_dcp(dcp.save, {"optimizer": get_optimizer_state_dict(model, optimizer)}, folder)


def missing_shards(folder: Path) -> list[str]:
    """The files of a sharded optimiser state that are not in `folder`: .metadata, or any file its index names."""
    from torch.distributed.checkpoint import FileSystemReader

    if not (folder / ".metadata").is_file():
        return [".metadata"]
    try:
        files = {item.relative_path for item in FileSystemReader(str(folder)).read_metadata().storage_data.values()}
    except Exception:  # a damaged index: pickle and format errors alike  # noqa: BLE001
        return [".metadata (unreadable)"]
    return sorted(name for name in files if not (folder / name).is_file())


def load_optimizer_shards(model, optimizer, folder: str) -> None:
    """The inverse of save_optimizer_shards, into this process's optimiser in place: an FSDP rank reads the pieces
    of its own shards (from any number of ranks that wrote them: DCP reshards), one process without FSDP the whole
    state. Only the moments and step counts are read: the optimiser's hyperparameters (the learning rate the
    schedule set) stay as they are."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    current = get_optimizer_state_dict(model, optimizer)  # zero moments of the right shapes, keyed by name
    moments = {"optimizer": {"state": current["state"]}}
    _with_dcp(dcp.load, moments, folder)
    set_optimizer_state_dict(model, optimizer, {"state": moments["optimizer"]["state"],
                                                "param_groups": current["param_groups"]})


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (folders named step_<digits>) of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if path.is_dir() and _CHECKPOINT_NAME.fullmatch(path.name)]
    return sorted(found, key=lambda path: int(path.name.split("_")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None when it has none."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(folder: str | Path) -> TrainingState:
    """The TrainingState of a checkpoint folder, after checking its files; CheckpointError naming the file that
    is missing or damaged otherwise. The weights are loaded by the caller (`load_model(folder)`)."""
    folder = Path(folder)
    advice = (f"delete {folder} to resume from the checkpoint before it, or start the run again in a new "
              f"output folder")
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: missing, so the checkpoint is incomplete or damaged; {advice}")
    weights = sorted(folder.glob("*.safetensors"))
    has_config = (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()  # model or LoRA
    if not has_config or not weights:
        raise CheckpointError(f"{folder}: no model weights (config.json or adapter_config.json, and *.safetensors) "
                              f"beside {STATE_FILE}; {advice}")
    from safetensors import safe_open

    for path in weights:  # reads each header and checks the file is as long as the header says
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"{path}: damaged weights file ({error}); {advice}") from None
    try:
        fields = torch.load(state_path, weights_only=True)
    except Exception as error:  # a truncated zip raises RuntimeError, a random file UnpicklingError
        raise CheckpointError(f"{state_path}: cannot be read ({error}); {advice}") from None
    if not isinstance(fields, dict) or fields.get("format") != STATE_FORMAT:
        found = fields.get("format") if isinstance(fields, dict) else type(fields).__name__
        raise CheckpointError(f"{state_path}: state format {found}, this r1zero reads format {STATE_FORMAT}; "
                              f"resume with the r1zero version that wrote it")
    expected = {f.name for f in dataclasses.fields(TrainingState)}
    optional = {"critic", "optimizer_shards", "in_flight"}  # added later: checkpoints written before them are still read
    if not expected - optional <= set(fields) <= expected:
        raise CheckpointError(f"{state_path}: fields {sorted(set(fields) ^ expected)} missing or unexpected; "
                              f"{advice}")
    shards = folder / SHARDS_FOLDER
    if fields.get("optimizer_shards") and (missing := missing_shards(shards)):
        raise CheckpointError(f"{shards}: the optimiser's shards ({fields['optimizer_shards']} ranks wrote them) "
                              f"are incomplete, {', '.join(missing)} missing; {advice}")
    return TrainingState(**fields)


def rewind_metrics(path: str | Path, lines: int, size: int, truncate: bool = True) -> None:
    """Cut metrics.jsonl back to its first `size` bytes, which must be `lines` complete lines (the position a
    checkpoint recorded); CheckpointError when the file no longer starts that way. truncate=False only checks."""
    path = Path(path)
    current = path.stat().st_size if path.exists() else 0
    if current < size:
        raise CheckpointError(f"{path}: {current} bytes, but the checkpoint recorded {size} bytes ({lines} lines) "
                              f"written by its step; the metrics file was replaced or cut, so resuming would leave "
                              f"a gap. Restore it, or start the run again in a new output folder")
    if current == 0:
        return
    with open(path, "r+b") as file:
        head = file.read(size)
        found = head.count(b"\n")
        if found != lines or (size and not head.endswith(b"\n")):
            raise CheckpointError(f"{path}: its first {size} bytes hold {found} lines, the checkpoint "
                                  f"recorded {lines} complete lines; the metrics file was edited, so resuming would "
                                  f"mix runs. Restore it, or start the run again in a new output folder")
        if truncate:
            file.truncate(size)
            file.flush()
            os.fsync(file.fileno())


def refuse_existing_run(output_dir: str | Path) -> None:
    """ConfigError when `output_dir` already holds a run's metrics or checkpoints: a new run never appends to
    them or deletes them."""
    output_dir = Path(output_dir)
    existing = [path for path in (output_dir / "metrics.jsonl", output_dir / "checkpoints") if path.exists()]
    if existing:
        raise ConfigError(f"output_dir: {output_dir} already holds a run ({', '.join(p.name for p in existing)}); "
                          f"continue it with `r1zero train --resume {output_dir}`, or give a new --output-dir")


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write beside `path`, then rename over it: a crash leaves the old file or the new one, never half."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(text, encoding="utf-8")
    _fsync(staging)
    os.replace(staging, path)


def refuse_changes_on_resume(run_dir: Path, overrides: dict) -> None:
    """ConfigError naming every setting of `overrides` that a resume may not change (not in RESUME_SETTINGS)."""
    refused = sorted(name for name in overrides if name not in RESUME_SETTINGS)
    if refused:
        flags = ", ".join(map(flag_name, refused))
        raise ConfigError(f"--resume {run_dir}: {flags} cannot change when resuming: the run continues with the "
                          f"settings in {run_dir / 'config.yaml'}, or it would not be the same run. A resume may "
                          f"change only {', '.join(RESUME_SETTINGS)}. To change anything else, start a new run from "
                          f"a checkpoint's weights: --model {run_dir}/checkpoints/step_NNNNNN")


def resume_settings(run_dir: str | Path, overrides: dict | None = None) -> TrainConfig:
    """The settings of the run in `run_dir` (its config.yaml), with `overrides` (raw values by setting name)
    limited to RESUME_SETTINGS; ConfigError naming any other setting given."""
    run_dir = Path(run_dir)
    recipe = run_dir / "config.yaml"
    if not recipe.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there, so it is not the output folder of an "
                          f"`r1zero train` run (or the run was killed before it started)")
    overrides = dict(overrides or {})
    refuse_changes_on_resume(run_dir, overrides)
    config = load_config(recipe, overrides)
    config.output_dir = str(run_dir)  # the folder may have moved since
    return config


# ---------------------------------------------------------------------------------------------
# Stopping cleanly on Ctrl-C


class StopSignals:
    """While active, SIGINT and SIGTERM ask the trainer to stop after the current step (it saves a checkpoint
    and raises TrainingInterrupted); a second signal interrupts at once (KeyboardInterrupt), without saving.

        with StopSignals() as stop:
            train(config, stop=stop)     # the trainer polls stop.requested at the end of each step

    Installed by the command line, not by `train()`: a library call keeps Python's usual Ctrl-C.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: int | None = None  # the signal number once one arrived
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(number).name}: stopped without saving")
        self.requested = number
        print(f"\nr1zero: {signal.Signals(number).name} received: finishing the current step, then saving a "
              f"checkpoint (send it again to stop at once, without saving)", file=sys.stderr, flush=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(folder: Path) -> None:
    """Rename out of the step_<digits> namespace first (atomic), then delete: never a half-deleted checkpoint."""
    doomed = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
