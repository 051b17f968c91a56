"""Where metrics go: every logger of --report-to receives what metrics.jsonl holds, the settings, the alerts and
sample tables (W&B offline, trackio's local store and TensorBoard's event files read back here); a logger asked
for but not installed is a settings error; a run prints r1zero's own lines only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1zero.config import ConfigError, TrainConfig
from r1zero.preflight import check_settings
from r1zero.tracking import MetricsLogger

ALERT = {"name": "entropy_collapse", "step": 2, "message": "entropy fell to 0.04 nats"}
SAMPLE = {"problem_id": "sums-test-0", "sample_index": 0, "completion": "<think> 3 + 4 = 7 </think> <answer> 7 </answer>",
          "answer": "7", "correct": True, "format": 1.0}


def log_a_small_history(output_dir: Path, report_to: list[str]) -> None:
    """Three records as the trainer writes them: an evaluation, a step with an alert and a NaN, a step."""
    logger = MetricsLogger(output_dir, report_to, None, "r1zero-tests", "tiny", {"learning_rate": 0.01, "seed": 3})
    logger.log(0, {"eval/pass@1": 0.25, "time/eval_seconds": 1.5})
    logger.log(1, {"reward/mean": 0.5, "kl": 0.125, "loss": float("nan"), "skipped_updates": 1})
    logger.log(2, {"reward/mean": 0.75, "kl": 0.25, "loss": 0.5, "skipped_updates": 0, "alerts": [ALERT]})
    logger.samples(2, [SAMPLE])
    logger.close()


def wandb_records(path: Path) -> list:
    """The protobuf Records of a W&B offline run file: a 7-byte header, then LevelDB-log blocks of 32 KiB whose
    records have a 7-byte header (checksum, length, type: 1 whole, 2 first, 3 middle, 4 last piece)."""
    from wandb.proto import wandb_internal_pb2

    raw, position, pending, records = path.read_bytes(), 7, b"", []
    assert raw[:4] == b":W&B"
    while position + 7 <= len(raw):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = int.from_bytes(raw[position + 4:position + 6], "little"), raw[position + 6]
        pending += raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_holds_the_metrics_settings_alerts_and_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_a_small_history(tmp_path, ["wandb"])
    [run_file] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    history = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:  # a table arrives as its fields: nested keys (name, field)
                key = [item.key] if item.key else list(item.nested_key)
                if len(key) == 1:
                    row[key[0]] = json.loads(item.value_json)
                else:
                    row.setdefault(key[0], {})[key[1]] = json.loads(item.value_json)
            history.append(row)
    scalars = [{k: v for k, v in row.items() if not k.startswith("_") and not isinstance(v, dict)} for row in history]
    assert [row["_step"] for row in history] == [0, 1, 2]
    assert scalars[0]["eval/pass@1"] == 0.25 and scalars[2]["reward/mean"] == 0.75 and scalars[1]["kl"] == 0.125
    assert scalars[1]["loss"] == "NaN" or scalars[1]["loss"] != scalars[1]["loss"]  # NaN travels, as NaN
    assert history[2]["alerts"]["_type"] == "table-file" and history[2]["eval/samples"]["_type"] == "table-file"
    updates = [item for record in records for item in
               (record.run.config.update if record.WhichOneof("record_type") == "run" else
                record.config.update if record.WhichOneof("record_type") == "config" else [])]
    config = {item.key: json.loads(item.value_json) for item in updates}
    assert config["learning_rate"] == 0.01 and config["seed"] == 3
    folder = run_file.parent / "files" / "media" / "table"  # tables are files: <key>_<step>_<hash>.table.json
    tables = {str(path.relative_to(folder)).rsplit("_", 2)[0]: json.loads(path.read_text())
              for path in folder.rglob("*.table.json")}
    assert tables["alerts"]["data"] == [[2, "entropy_collapse", "entropy fell to 0.04 nats"]]
    assert tables["eval/samples"]["columns"][:3] == ["step", "problem_id", "sample_index"]
    assert tables["eval/samples"]["data"] == [[2, "sums-test-0", 0, SAMPLE["completion"], "7", True]]


TRACKIO_READBACK = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_tracking import log_a_small_history
log_a_small_history(Path(sys.argv[2]), ["trackio"])
from trackio.sqlite_storage import SQLiteStorage
logs = SQLiteStorage.get_logs("r1zero-tests", "tiny")
alerts = SQLiteStorage.get_alerts("r1zero-tests", run_name="tiny")
config = SQLiteStorage.get_run_config("r1zero-tests", "tiny")
print(json.dumps({"logs": logs, "alerts": alerts, "config": config}, default=str))
"""


def test_trackio_local_store_holds_the_metrics_and_alerts(tmp_path):
    # trackio reads TRACKIO_DIR when it is imported: a fresh process, its store in tmp_path
    environment = {**os.environ, "TRACKIO_DIR": str(tmp_path / "store")}
    (tmp_path / "run").mkdir()
    result = subprocess.run([sys.executable, "-c", TRACKIO_READBACK, str(Path(__file__).parent), str(tmp_path / "run")],
                            capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"logs"')))
    by_step = {}
    for row in found["logs"]:
        by_step.setdefault(row["step"], {}).update(row)
    assert by_step[0]["eval/pass@1"] == 0.25 and by_step[1]["kl"] == 0.125 and by_step[2]["reward/mean"] == 0.75
    table = next(row["eval/samples"] for row in found["logs"] if "eval/samples" in row)
    assert table["_type"] == "trackio.table" and table["_value"][0]["problem_id"] == "sums-test-0"
    assert [alert["title"] for alert in found["alerts"]] == ["entropy_collapse (step 2)"]
    assert "entropy fell to 0.04 nats" in found["alerts"][0]["text"]
    assert found["config"]["learning_rate"] == 0.01 and found["config"]["seed"] == 3
    assert (tmp_path / "store").is_dir()


def test_tensorboard_events_hold_the_finite_numbers_settings_alerts_and_samples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_a_small_history(tmp_path, ["tensorboard"])
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars["reward/mean"] == [(1, 0.5), (2, 0.75)] and scalars["eval/pass@1"] == [(0, 0.25)]
    assert scalars["loss"] == [(2, 0.5)]  # the NaN of step 1 is left out: TensorBoard cannot draw it
    texts = {tag: [event.tensor_proto.string_val[0].decode() for event in events.Tensors(tag)]
             for tag in events.Tags()["tensors"]}
    assert "learning_rate: 0.01" in texts["settings/text_summary"][0]
    assert texts["alerts/entropy_collapse/text_summary"] == ["entropy fell to 0.04 nats"]
    assert "sums-test-0" in texts["samples/text_summary"][0]


def test_every_number_of_metrics_jsonl_reaches_the_loggers(tmp_path):
    received = []

    class Recorder:
        def log(self, step, numbers):
            received.append((step, numbers))

        def alert(self, step, name, message):
            received.append((step, name))

        def samples(self, step, rows):
            received.append((step, rows))

        def close(self):
            pass

    logger = MetricsLogger(tmp_path, ["none"])
    logger.loggers = [Recorder()]
    logger.log(3, {"reward/mean": 0.5, "skipped_updates": 2, "alerts": [ALERT], "note": "text is not a number"})
    logger.samples(3, [SAMPLE] * 10)
    logger.close()
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert received[0] == (3, {"reward/mean": 0.5, "skipped_updates": 2.0})
    assert set(received[0][1]) == {key for key, value in line.items() if isinstance(value, (int, float))} - {"step"}
    assert received[1] == (3, "entropy_collapse")
    assert len(received[2][1]) == 8 and received[2][1][0] == [3, "sums-test-0", 0, SAMPLE["completion"], "7", True]


def test_a_logger_asked_for_but_not_installed_is_a_settings_error(monkeypatch, llama_dir):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "wandb" else real(name, *rest))
    with pytest.raises(ConfigError, match=r"report_to: wandb is asked for but not installed; pip install 'r1zero\[wandb\]'"):
        check_settings(TrainConfig(model=str(llama_dir), report_to=["tensorboard", "wandb"]))
    check_settings(TrainConfig(model=str(llama_dir), report_to=["tensorboard", "trackio"]))  # both installed here


def test_a_run_prints_r1zero_lines_only(llama_dir, tmp_path):
    # no "Loading weights" or "Writing model shards" bars from transformers, at start or at a checkpoint
    command = [sys.executable, "-m", "r1zero.cli", "train", "--model", str(llama_dir), "--output-dir",
               str(tmp_path / "run"), "--max-steps", "2", "--prompts-per-step", "2", "--group-size", "2",
               "--max-new-tokens", "4", "--eval-problems", "2", "--eval-samples", "1", "--checkpoint-every", "1",
               "--warmup-steps", "1", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    strangers = [line for line in lines if not line.startswith(("r1zero: ", "step ", "eval ", "ALERT ", "saved "))]
    assert strangers == [] and any(line.startswith("eval ") for line in lines)
    assert (tmp_path / "run" / "checkpoints" / "step_000002").is_dir()
