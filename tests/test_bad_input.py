"""Bad inputs through the command line: a clear error naming the file and row, a non-zero exit, and a previous run's
outputs (metrics.jsonl, checkpoints, config.yaml, the final model) left exactly as they were."""

import hashlib
import json
import shutil

import pytest

from r1zero.cli import main
from r1zero.config import ConfigError, TrainConfig
from r1zero.preflight import check_settings
from r1zero.trainer import train

GOOD_ROWS = [{"prompt": f"What is {a} + {a}", "answer": str(2 * a)} for a in range(1, 11)]
TINY = ["--max-steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4",
        "--eval-problems", "2", "--eval-samples", "1", "--report-to", "none", "--device", "cpu"]


def _jsonl(rows) -> bytes:
    return b"".join(row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n" for row in rows)


@pytest.fixture(scope="module")
def previous_run(llama_dir, tmp_path_factory):
    """A finished 2-step run with a checkpoint after each step."""
    folder = tmp_path_factory.mktemp("previous") / "run"
    train(TrainConfig(model=str(llama_dir), output_dir=str(folder), max_steps=2, checkpoint_every=1, prompts_per_step=2,
                      group_size=2, max_new_tokens=4, eval_problems=2, eval_samples=1, report_to=["none"],
                      device="cpu"))
    return folder


@pytest.fixture
def run(previous_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(previous_run, copy)
    return copy


def _contents(folder) -> dict:
    """Every file under `folder` by relative path: its digest and modification time."""
    return {str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _fails_cleanly(arguments, run, capsys, *fragments) -> str:
    before = _contents(run)
    assert before and (run / "metrics.jsonl").is_file() and (run / "checkpoints" / "step_000002").is_dir()
    code = main(arguments)
    error = capsys.readouterr().err
    assert code == 2, error
    for fragment in fragments:
        assert fragment in error, error
    assert _contents(run) == before  # nothing written, truncated, renamed or deleted
    return error


# ---------------------------------------------------------------------------------------------
# Data files: the error names the file and the 1-based row


@pytest.mark.parametrize("rows, fragments", [
    ([*GOOD_ROWS[:2], b'{"prompt": "What is 3 + 3", "answer": }\n', *GOOD_ROWS[3:]], [":3: not valid JSON"]),
    ([*GOOD_ROWS[:3], {"prompt": "What is 4 + 4"}, *GOOD_ROWS[4:]], [":4: missing field 'answer'"]),
    ([GOOD_ROWS[0], {"prompt": "   ", "answer": "4"}, *GOOD_ROWS[2:]], [":2: field 'prompt' is empty"]),
    ([*GOOD_ROWS[:4], b'{"prompt": "What is \xff", "answer": "1"}\n', *GOOD_ROWS[5:]], [":5: bytes that are not UTF-8"]),
    ([], [": no examples"]),
    # the tiny model's context is 256 tokens; this prompt is 379 with the template (81 for "What is 1 + 1")
    ([*GOOD_ROWS[:5], {"prompt": "What is " + "1 + " * 150 + "1", "answer": "151"}, *GOOD_ROWS[6:]],
     [":6: 379 tokens", "longer than the model's context of 256 tokens", "the prompt alone fills the context"]),
], ids=["malformed-json", "missing-field", "empty-field", "not-utf8", "empty-dataset", "prompt-longer-than-context"])
def test_a_bad_data_file_names_its_row_and_changes_nothing(llama_dir, run, tmp_path, capsys, rows, fragments):
    data = tmp_path / "data.jsonl"
    data.write_bytes(_jsonl(rows))
    arguments = ["train", "--model", str(llama_dir), "--dataset", str(data), "--output-dir", str(run), *TINY]
    _fails_cleanly(arguments, run, capsys, str(data), *fragments)
    # --check finds the same problem, without creating an output folder
    assert main([*arguments, "--output-dir", str(tmp_path / "never"), "--check"]) == 2
    error = capsys.readouterr().err
    assert all(fragment in error for fragment in fragments), error
    assert not (tmp_path / "never").exists()


def test_prompt_length_check_names_only_the_rows_that_do_not_fit(llama_dir, tmp_path, capsys):
    rows = [*GOOD_ROWS[:2], {"prompt": "What is " + "1 + " * 60 + "1", "answer": "61"}, *GOOD_ROWS[3:]]
    data = tmp_path / "data.jsonl"
    data.write_bytes(_jsonl(rows))
    base = ["train", "--check", "--model", str(llama_dir), "--dataset", str(data)]
    assert main([*base, "--max-new-tokens", "56"]) == 0  # row 3 is 199 tokens with the template: 199 + 56 = 255 fit
    capsys.readouterr()
    assert main([*base, "--max-new-tokens", "58"]) == 2  # 199 + 58 = 257 > 256
    error = capsys.readouterr().err
    assert f"{data}:3: 199 tokens" in error and f"{data}:1:" not in error
    assert "lower max_new_tokens to 57 or less" in error  # 256 - 199


# ---------------------------------------------------------------------------------------------
# Model folders and checkpoints


def test_a_model_folder_without_a_tokenizer(llama_dir, run, tmp_path, capsys):
    model = tmp_path / "no-tokenizer"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(llama_dir / name, model / name)
    _fails_cleanly(["train", "--model", str(model), "--output-dir", str(run), *TINY], run, capsys,
                   f"model folder {model} has no tokenizer")


def test_a_model_folder_without_weights_fails_before_writing(llama_dir, tmp_path, capsys):
    model = tmp_path / "no-weights"
    shutil.copytree(llama_dir, model)
    (model / "model.safetensors").unlink()
    output = tmp_path / "new-run"
    assert main(["train", "--model", str(model), "--output-dir", str(output), *TINY]) == 2
    assert str(model) in capsys.readouterr().err
    assert not output.exists()


def test_a_truncated_weights_file_in_the_newest_checkpoint(run, capsys):
    weights = run / "checkpoints" / "step_000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _fails_cleanly(["train", "--resume", str(run)], run, capsys, f"{weights}: damaged weights file",
                   "delete", "to resume from the checkpoint before it")


@pytest.mark.parametrize("damage, fragment", [
    (lambda state: state.unlink(), "missing, so the checkpoint is incomplete or damaged"),
    (lambda state: state.write_bytes(state.read_bytes()[:100]), "cannot be read"),
], ids=["missing", "truncated"])
def test_a_missing_or_truncated_state_file(run, capsys, damage, fragment):
    state = run / "checkpoints" / "step_000002" / "trainer_state.pt"
    damage(state)
    _fails_cleanly(["train", "--resume", str(run)], run, capsys, f"{state}: {fragment}")
    assert main(["train", "--resume", str(run), "--check"]) == 2  # --check reads the checkpoint too
    assert fragment in capsys.readouterr().err


def test_a_metrics_file_cut_below_the_checkpoint(run, capsys):
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:50])
    _fails_cleanly(["train", "--resume", str(run)], run, capsys, f"{metrics}: 50 bytes", "replaced or cut")


# ---------------------------------------------------------------------------------------------
# Settings


def test_a_new_run_never_writes_into_an_existing_run(llama_dir, run, capsys):
    _fails_cleanly(["train", "--model", str(llama_dir), "--output-dir", str(run), *TINY], run, capsys,
                   f"{run} already holds a run", f"--resume {run}")


def test_resume_refuses_settings_that_would_make_another_run(run, capsys):
    _fails_cleanly(["train", "--resume", str(run), "--learning-rate", "0.1"], run, capsys,
                   "--learning-rate cannot change when resuming", "max_steps")
    _fails_cleanly(["train", "--resume", str(run), "--max-steps", "1"], run, capsys,
                   "max_steps: 1 is below the step of", "--max-steps 2 or more")
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--check"]) == 0  # a safe one is accepted
    assert "max_steps: 3" in capsys.readouterr().out


@pytest.mark.parametrize("settings, messages", [
    ({"reward_weights": {"accuracy": 1.0, "lenght": 0.5}}, ["unknown reward 'lenght'; valid names: accuracy, format"]),
    ({"reward_weights": {"accuracy": float("nan")}}, ["the weight of 'accuracy' is nan"]),
    ({"max_new_tokens": 256}, ["max_new_tokens: 256 leaves no room for the prompt in the model's context of 256"]),
    ({"temperature": 0.0}, ["temperature: 0 samples greedily"]),
    ({"checkpoint_every": -1, "keep_checkpoints": 0, "max_nonfinite_steps": 0},
     ["checkpoint_every: must be >= 0", "keep_checkpoints: must be > 0", "max_nonfinite_steps: must be > 0"]),
])
def test_settings_that_cannot_work_are_refused(llama_dir, settings, messages):
    with pytest.raises(ConfigError) as error:
        check_settings(TrainConfig(model=str(llama_dir), **settings))
    for message in messages:
        assert message in str(error.value)


def test_settings_without_effect_only_warn(llama_dir, capsys):
    config = TrainConfig(model=str(llama_dir), kl_coef=0.0, kl_estimator="k1", clip_high=0.28, max_steps=3)
    warnings = config.validate()
    assert [w.split(":")[0] for w in warnings] == ["kl_estimator", "clip_low/clip_high", "warmup_steps"]
    assert "'k1' has no effect because kl_coef is 0" in warnings[0]
    assert TrainConfig(model=str(llama_dir), kl_coef=0.001, kl_estimator="k1").validate() == []
    assert main(["train", "--check", "--model", str(llama_dir), "--kl-estimator", "k2"]) == 0
    assert "r1zero: warning: kl_estimator: 'k2' has no effect" in capsys.readouterr().err
