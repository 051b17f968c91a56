"""Checkpoints: exact round-trips, atomic writes, the metrics rewind, non-finite stops, and kill-and-resume runs."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1zero import algorithms
from r1zero import checkpoint as checkpoint_module
from r1zero.checkpoint import (CheckpointError, TrainingState, capture_global_rng, latest_checkpoint,
                               list_checkpoints, load_checkpoint, resume_settings, rewind_metrics, save_checkpoint)
from r1zero.cli import main
from r1zero.config import ConfigError, TrainConfig, to_yaml
from r1zero.health import HealthMonitor
from r1zero.tasks import load_problems

# ---------------------------------------------------------------------------------------------
# Round-trips


def _training_objects(model_dir, data_path, seed=0):
    """A model and every stateful object the trainer checkpoints, as the trainer builds them."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))
    problems = load_problems("sums", str(data_path), None, 2, seed)
    generators = {"sampling": torch.Generator().manual_seed(seed), "shuffling": torch.Generator().manual_seed(seed + 1)}
    return model, optimizer, scheduler, problems, HealthMonitor(patience=2), generators


def _snapshot(step, optimizer, scheduler, problems, monitor, generators):
    states = {name: generator.get_state() for name, generator in generators.items()}
    return TrainingState(step, optimizer.state_dict(), scheduler.state_dict(), problems.state_dict(),
                         monitor.state_dict(), states, capture_global_rng(), metrics_lines=3, metrics_bytes=120)


def _next_numbers(problems, monitor, generators) -> dict:
    """What every random source and stateful object gives next; equal only when their states are equal."""
    return {
        "python": random.random(), "numpy": float(np.random.rand()), "torch": torch.rand(3).tolist(),
        "sampling": torch.rand(3, generator=generators["sampling"]).tolist(),
        "shuffling": torch.randperm(6, generator=generators["shuffling"]).tolist(),
        # 9 rows after 2 held out = 8 train rows: 5 batches of 3 cross an epoch boundary
        "batches": [[e.id for e in problems.next_batch(3)] for _ in range(5)],
        # kl 0.02 -> 0.5 is a 25-fold rise over the 2 records of history (> 10-fold), and entropy 0.01 is below the
        # 0.05 floor after a peak of 1.0: both alerts fire only for a monitor that remembers that history
        "alerts": [a.name for a in monitor.update(9, {"kl": 0.5, "entropy": 0.01})],
    }


def _train_a_little(model, optimizer, scheduler, steps=2):
    for _ in range(steps):
        loss = model(input_ids=torch.tensor([[3, 4, 5, 6]]), labels=torch.tensor([[3, 4, 5, 6]])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


@pytest.fixture
def data_path(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {a} + {a}", "answer": str(2 * a)}) + "\n"
                            for a in range(1, 11)))
    return path


def test_round_trip_restores_weights_optimizer_and_every_random_state(llama_dir, data_path, tmp_path):
    model, optimizer, scheduler, problems, monitor, generators = _training_objects(llama_dir, data_path)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    _train_a_little(model, optimizer, scheduler)
    problems.next_batch(3)  # mid-epoch: 5 of 8 rows left in the order
    for step, kl in enumerate((0.02, 0.01)):
        monitor.update(step, {"kl": kl, "entropy": 1.0})
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    folder = save_checkpoint(tmp_path / "run", _snapshot(2, optimizer, scheduler, problems, monitor, generators),
                             model, tokenizer, keep=2)
    expected = _next_numbers(problems, monitor, generators)
    assert expected["alerts"] == ["entropy_collapse", "kl_explosion"]  # the history matters for this check
    _train_a_little(model, optimizer, scheduler)  # the original moves on; the checkpoint must not
    expected_lr, expected_moments = scheduler.get_last_lr(), optimizer.state_dict()["state"]

    # a fresh process would build everything from the settings, then restore
    fresh_model, fresh_optimizer, fresh_scheduler, fresh_problems, fresh_monitor, fresh_generators = \
        _training_objects(folder, data_path, seed=7)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = load_checkpoint(folder)
    assert state.step == 2 and state.metrics_lines == 3 and state.metrics_bytes == 120
    state.restore(fresh_optimizer, fresh_scheduler, fresh_problems, fresh_monitor, fresh_generators)
    assert _next_numbers(fresh_problems, fresh_monitor, fresh_generators) == expected
    # the same two further updates from the restored state land on the same weights, moments and schedule
    _train_a_little(fresh_model, fresh_optimizer, fresh_scheduler)
    for got, want in zip(fresh_model.parameters(), model.parameters()):
        assert torch.equal(got, want)
    for index, moments in expected_moments.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh_optimizer.state_dict()["state"][index][key], moments[key])
    # 4 steps: the end of the 5-step warm-up, factor (4 + 1) / 5; a scheduler not restored would be at 3/5
    assert fresh_scheduler.get_last_lr() == expected_lr == [pytest.approx(1e-2)]


def test_a_crash_between_writing_and_renaming_leaves_no_visible_checkpoint(llama_dir, data_path, tmp_path,
                                                                          monkeypatch):
    model, optimizer, scheduler, problems, monitor, generators = _training_objects(llama_dir, data_path)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    run = tmp_path / "run"
    save_checkpoint(run, _snapshot(2, optimizer, scheduler, problems, monitor, generators), model, tokenizer, keep=2)
    real_replace = os.replace

    def crash_on_publish(source, destination):
        if str(source).endswith(".partial") and "checkpoints" in str(source):
            raise KeyboardInterrupt("killed between writing and renaming")
        return real_replace(source, destination)

    monkeypatch.setattr(checkpoint_module.os, "replace", crash_on_publish)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, _snapshot(4, optimizer, scheduler, problems, monitor, generators), model, tokenizer, 2)
    partial = run / "checkpoints" / ".step_000004.partial"
    assert (partial / "trainer_state.pt").is_file() and (partial / "model.safetensors").is_file()  # all written...
    assert latest_checkpoint(run).name == "step_000002"  # ...yet invisible: the newest complete one is still 2
    assert [p.name for p in list_checkpoints(run)] == ["step_000002"]
    monkeypatch.setattr(checkpoint_module.os, "replace", real_replace)
    save_checkpoint(run, _snapshot(4, optimizer, scheduler, problems, monitor, generators), model, tokenizer, 2)
    assert not partial.exists() and latest_checkpoint(run).name == "step_000004"


def test_only_the_newest_checkpoints_are_kept_and_nonfinite_weights_are_refused(llama_dir, data_path, tmp_path):
    model, optimizer, scheduler, problems, monitor, generators = _training_objects(llama_dir, data_path)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    run = tmp_path / "run"
    for step in (2, 4, 6, 10):
        save_checkpoint(run, _snapshot(step, optimizer, scheduler, problems, monitor, generators), model, tokenizer, 2)
    assert [p.name for p in list_checkpoints(run)] == ["step_000006", "step_000010"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000006", "step_000010"]  # no leftovers
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        save_checkpoint(run, _snapshot(12, optimizer, scheduler, problems, monitor, generators), model, tokenizer, 2)
    assert latest_checkpoint(run).name == "step_000010"


# ---------------------------------------------------------------------------------------------
# The metrics file and the resume settings


def test_rewind_cuts_lines_written_after_the_checkpoint_including_a_torn_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    kept = '{"step": 0, "eval/pass@1": 0.5}\n{"step": 1, "loss": 0.25}\n'
    path.write_text(kept + '{"step": 2, "loss": 0.125}\n{"step": 3, "lo')  # a crash tore the last line
    rewind_metrics(path, lines=2, size=len(kept.encode()))
    assert path.read_text() == kept
    with pytest.raises(CheckpointError, match="hold 2 lines, the checkpoint recorded 1"):
        rewind_metrics(path, lines=1, size=len(kept.encode()))  # the file no longer matches: refuse, change nothing
    with pytest.raises(CheckpointError, match="replaced or cut"):
        rewind_metrics(path, lines=3, size=len(kept.encode()) + 10)
    assert path.read_text() == kept


def test_resume_takes_the_runs_settings_and_only_safe_overrides(tmp_path):
    run = tmp_path / "moved-run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(TrainConfig(output_dir="elsewhere", learning_rate=1e-3, max_steps=8)))
    config = resume_settings(run, {"max_steps": "12", "checkpoint_every": "3"})
    assert (config.max_steps, config.checkpoint_every, config.learning_rate) == (12, 3, 1e-3)
    assert config.output_dir == str(run)
    with pytest.raises(ConfigError, match="--learning-rate, --seed cannot change when resuming"):
        resume_settings(run, {"learning_rate": "1", "seed": "3", "max_steps": "9"})
    with pytest.raises(ConfigError, match="no config.yaml"):
        resume_settings(tmp_path, {})


# ---------------------------------------------------------------------------------------------
# Non-finite steps stop the run with the last good checkpoint intact


def test_nonfinite_steps_in_a_row_stop_the_run_and_are_never_checkpointed(llama_dir, tmp_path, monkeypatch, capsys):
    grpo = algorithms.ADVANTAGE_ESTIMATORS["grpo"]
    calls = []

    def nan_from_step_5(rewards, eps):  # NaN advantages make the loss NaN: the trainer's real skip path
        calls.append(1)
        advantages = grpo(rewards, eps)
        return advantages * float("nan") if len(calls) >= 5 else advantages

    monkeypatch.setitem(algorithms.ADVANTAGE_ESTIMATORS, "grpo", nan_from_step_5)
    run = tmp_path / "run"
    code = main(["train", "--model", str(llama_dir), "--output-dir", str(run), "--max-steps", "10",
                 "--checkpoint-every", "2", "--keep-checkpoints", "5", "--max-nonfinite-steps", "3",
                 "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4", "--eval-problems", "2",
                 "--eval-samples", "1", "--eval-every", "0", "--report-to", "none", "--learning-rate", "1e-2",
                 "--device", "cpu"])
    error = capsys.readouterr().err
    assert code == 1
    assert "stopped at step 7: 3 steps in a row" in error and "weights are those of step 4" in error
    assert "NaN or infinite loss or gradient" in error and "step_000004" in error
    # checkpoints at 2 and 4; step 6 was due but its update was skipped, so it was not taken
    assert [p.name for p in list_checkpoints(run)] == ["step_000002", "step_000004"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "skipped_updates" in r] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["skipped_updates"] for r in records if "skipped_updates" in r] == [0, 0, 0, 0, 1, 1, 1]
    assert not (run / "final").exists()
    saved = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step_000004")
    assert all(torch.isfinite(p).all() for p in saved.parameters())


# ---------------------------------------------------------------------------------------------
# Kill at a random moment, resume, compare with an uninterrupted run

KILL_TRIALS = int(os.environ.get("R1ZERO_KILL_TRIALS", "3"))
SKIPPED_KEYS = ("time/", "throughput/")  # wall-clock numbers differ between any two runs

LAUNCHER = """
import sys
from r1zero.rewards import REWARD_FUNCTIONS
from r1zero.cli import main

if __name__ == "__main__":  # the scoring pool's spawned workers import this file too
    REWARD_FUNCTIONS["length"] = lambda completion, example: len(completion) / 100  # a signal a random model earns
    sys.exit(main(sys.argv[1:]))
"""


def _data_and_launcher(folder):
    """A dataset of ten sums (its epochs end mid-run) and the launcher script, written into folder."""
    data_path = folder / "data.jsonl"
    data_path.write_text("".join(json.dumps({"prompt": f"What is {a} + {a}", "answer": str(2 * a)}) + "\n"
                                 for a in range(1, 11)))
    launcher = folder / "launch.py"
    launcher.write_text(LAUNCHER)
    return data_path, launcher


def _settings(model_dir, data_path):
    """8 steps, a checkpoint every 2; KL (a reference model), mu = 2 with minibatches (the shuffling generator),
    a dataset whose epochs end mid-run (the data order), Adam moments that matter (lr 1e-2, a length reward)."""
    return ["--model", str(model_dir), "--dataset", str(data_path), "--max-steps", "8", "--checkpoint-every", "2",
            "--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "6", "--eval-problems", "2",
            "--eval-samples", "2", "--eval-every", "3", "--report-to", "none", "--threads", "1", "--device", "cpu",
            "--kl-coef", "0.05", "--updates-per-batch", "2", "--minibatch-size", "3", "--learning-rate", "1e-2",
            "--reward-weights", "accuracy=1,format=0.5,length=2"]


def _launch(launcher, arguments, log_path):
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, str(launcher), "train", *arguments], stdout=log, stderr=log), log


def _records(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(SKIPPED_KEYS)} for line in lines]


@contextlib.contextmanager
def replay_hint(seed: int):
    """Re-raise any failure inside with the kill seed that repeats it (R1ZERO_KILL_SEED) in its message."""
    try:
        yield
    except BaseException as error:
        note = f"kill seed {seed}: R1ZERO_KILL_SEED={seed} repeats these kill points"
        if hasattr(error, "add_note"):  # Python 3.11+
            error.add_note(note)
        else:
            print(note, file=sys.stderr)
        raise


def _largest_difference(expected: list[dict], got: list[dict]) -> float:
    """Largest |difference| of the numeric values; AssertionError for any other mismatch (keys, steps, text)."""
    assert len(got) == len(expected), f"{len(got)} metrics lines, expected {len(expected)}"
    largest = 0.0
    for want, have in zip(expected, got):
        assert have.keys() == want.keys() and have["step"] == want["step"], (want, have)
        for key, value in want.items():
            if isinstance(value, float) and isinstance(have[key], float):
                largest = max(largest, abs(value - have[key]))
            else:
                assert have[key] == value, (key, want, have)
    return largest


def _resumed_difference(launcher, run, log_path, reference, expected, records=None) -> float:
    """Resume `run` to its end; the largest difference of its metrics (records(run), default _records) and final
    weights from the uninterrupted `reference` run's (`expected`: its records)."""
    process, log = _launch(launcher, ["--resume", str(run)], log_path)
    assert process.wait(timeout=600) == 0, log_path.read_text()[-3000:]
    log.close()
    largest = _largest_difference(expected, (records or _records)(run))
    for name, tensor in _weights(run / "final").items():
        largest = max(largest, (tensor - _weights(reference / "final")[name]).abs().max().item())
    return largest


def _line_count(run) -> int:
    path = run / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _signal_at(process, metrics, lines: int, extra: float, number: int) -> bool:
    """Send signal `number` once `metrics` has `lines` lines and `extra` more seconds have passed; False when
    the process ended first."""
    while process.poll() is None and (metrics.read_bytes().count(b"\n") if metrics.exists() else 0) < lines:
        time.sleep(0.002)
    try:
        process.wait(timeout=extra)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(number)
        return True


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_run_killed_at_random_moments_resumes_to_the_same_metrics(llama_dir, tmp_path):
    data_path, launcher = _data_and_launcher(tmp_path)
    settings = _settings(llama_dir, data_path)

    reference = tmp_path / "reference"
    started = time.time()
    process, log = _launch(launcher, settings + ["--output-dir", str(reference)], tmp_path / "reference.log")
    while process.poll() is None and not (reference / "metrics.jsonl").exists():
        time.sleep(0.005)
    startup = time.time() - started  # imports and loading: most of a run this small
    assert process.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    log.close()
    expected, expected_weights = _records(reference), _weights(reference / "final")
    assert [r["step"] for r in expected] == [0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 8]  # evals at 0, 3, 6 and the end

    seed = int(os.environ.get("R1ZERO_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    print(f"\nkill seed {seed} (R1ZERO_KILL_SEED={seed} repeats these kill points)")
    with replay_hint(seed):  # a failure says which seed repeats its kill points
        largest, kill_points = 0.0, 0
        for trial in range(KILL_TRIALS):
            run, log_path = tmp_path / f"killed{trial}", tmp_path / f"killed{trial}.log"
            for kill in range(1 + trial % 2):  # every other trial also kills the resumed run
                resuming = (run / "config.yaml").exists()
                process, log = _launch(launcher, ["--resume", str(run)] if resuming else
                                       settings + ["--output-dir", str(run)], log_path)
                # a random moment by progress, not by clock (start-up time varies): after `target` metrics lines,
                # then up to 0.3 s more (a step, an evaluation or a checkpoint write); target 0: during start-up
                graceful = trial % 3 == 2 and kill == 0  # every third trial: SIGTERM, in the middle of training
                target = rng.randint(1, len(expected) - 3) if graceful else rng.randint(_line_count(run), len(expected))
                extra = rng.uniform(0, startup if target == 0 else 0.3)
                number = signal.SIGTERM if graceful else signal.SIGKILL
                sent = _signal_at(process, run / "metrics.jsonl", target, extra, number)
                code = process.wait(timeout=300)
                log.close()
                kill_points += sent
                partial = any(p.name.endswith(".partial") for p in (run / "checkpoints").glob(".*"))
                print(f"trial {trial}.{kill}: {signal.Signals(number).name} after {target} lines + {extra:.2f}s "
                      f"({'sent' if sent else 'run had ended'}, exit {code}): {_line_count(run)} lines, checkpoints "
                      f"{[int(p.name[5:]) for p in list_checkpoints(run)]}{', a partial one' if partial else ''}")
                if code == 128 + signal.SIGTERM:  # caught: finished its step, saved, said how to continue
                    text = log_path.read_text()
                    assert "Continue with: r1zero train --resume" in text, text
                    assert int(latest_checkpoint(run).name[5:]) == _records(run)[-1]["step"]
            resuming = (run / "config.yaml").exists()  # else killed before the run wrote anything: start it again
            process, log = _launch(launcher, ["--resume", str(run)] if resuming else
                                   settings + ["--output-dir", str(run)], log_path)
            assert process.wait(timeout=300) == 0, log_path.read_text()
            log.close()
            largest = max(largest, _largest_difference(expected, _records(run)))
            for name, tensor in _weights(run / "final").items():
                largest = max(largest, (tensor - expected_weights[name]).abs().max().item())
        print(f"{kill_points} kill points, largest metric or weight difference {largest}")
        assert largest <= 1e-6


@pytest.mark.ray
@pytest.mark.parametrize("fsdp", [True, False], ids=["fsdp", "replicated"])
def test_a_run_on_learner_ranks_killed_mid_training_resumes_to_the_same_metrics_and_weights(llama_dir, tmp_path,
                                                                                         fsdp):
    # Two ranks; with FSDP each holds half of the policy, the reference and AdamW's moments, and writes its own
    # shards of the optimiser state into the checkpoint (torch.distributed.checkpoint), which a resume reads back in
    # place: nothing is gathered. Replicated ranks send rank 0's state, numbered as in a one-process run. A run
    # SIGKILLed during step 6 (after its step-4 checkpoint) and resumed writes the uninterrupted run's metrics and
    # final weights. (Both fail if the checkpoint keeps the ranks' learning rate, the one their last update used,
    # instead of the driver's schedule's next one.)
    data_path, launcher = _data_and_launcher(tmp_path)
    settings = _settings(llama_dir, data_path) + ["--train-processes", "2", "--ray-worker-cpus", "0.5"]
    settings += ["--fsdp"] if fsdp else []
    reference = tmp_path / "reference"
    process, log = _launch(launcher, settings + ["--output-dir", str(reference)], tmp_path / "reference.log")
    assert process.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    log.close()
    expected = _records(reference)
    run, log_path = tmp_path / "killed", tmp_path / "killed.log"
    process, log = _launch(launcher, settings + ["--output-dir", str(run)], log_path)
    lines_through_step_5 = [r["step"] for r in expected].index(5) + 1  # step 4's checkpoint is complete by then
    assert _signal_at(process, run / "metrics.jsonl", lines_through_step_5, 0.05, signal.SIGKILL)
    process.wait(timeout=60)
    log.close()
    assert [int(p.name[5:]) for p in list_checkpoints(run)] == [2, 4]
    fields = torch.load(latest_checkpoint(run) / "trainer_state.pt", weights_only=True)
    state, shards = fields["optimizer"], latest_checkpoint(run) / "optimizer"
    parameters = list(AutoModelForCausalLM.from_pretrained(llama_dir).parameters())
    if fsdp:  # the moments are in the ranks' files only: two of them, and the index
        assert state["state"] == {} and fields["optimizer_shards"] == 2
        assert sorted(path.name for path in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        sizes = [path.stat().st_size for path in shards.glob("*.distcp")]
        moments = 2 * 4 * sum(p.numel() for p in parameters)  # exp_avg and exp_avg_sq in float32
        assert sum(sizes) >= moments and all(0.3 < size / sum(sizes) < 0.7 for size in sizes)  # about half each
    else:
        assert not shards.exists() and fields["optimizer_shards"] == 0
        assert sorted(state["state"]) == list(range(len(parameters)))  # every parameter's moments, numbered
        assert all(state["state"][i]["exp_avg"].shape == p.shape for i, p in enumerate(parameters))
    assert _resumed_difference(launcher, run, log_path, reference, expected) <= 1e-6


def test_optimizer_shards_written_and_read_back_keep_the_moments_and_the_learning_rate(llama_dir, tmp_path):
    # the sharded format in one process (FSDP ranks write the same files, one a rank): every moment and step count
    # comes back exactly, and the learning rate the schedule set before loading stays
    from r1zero.checkpoint import load_optimizer_shards, missing_shards, save_optimizer_shards

    def trained(steps):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(llama_dir)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        for _ in range(steps):
            model(input_ids=torch.tensor([[3, 4, 5, 6]]), labels=torch.tensor([[3, 4, 5, 6]])).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return model, optimizer

    model, optimizer = trained(3)
    save_optimizer_shards(model, optimizer, str(tmp_path / "optimizer"))
    assert missing_shards(tmp_path / "optimizer") == []  # the index and the one file it names
    fresh, fresh_optimizer = trained(0)
    fresh.load_state_dict(model.state_dict())
    fresh_optimizer.param_groups[0]["lr"] = 5e-3  # the driver's schedule, restored before the shards
    load_optimizer_shards(fresh, fresh_optimizer, str(tmp_path / "optimizer"))
    assert fresh_optimizer.param_groups[0]["lr"] == 5e-3
    expected, loaded = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert sorted(loaded) == sorted(expected) and len(expected) == len(list(model.parameters()))
    for index, moments in expected.items():
        assert float(moments["step"]) == 3.0 == float(loaded[index]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(loaded[index][key], moments[key]) and moments[key].abs().max() > 0
    # a shard file the index names, gone (a rank that wrote elsewhere): named; so is a missing index
    (tmp_path / "optimizer" / "__0_0.distcp").unlink()
    assert missing_shards(tmp_path / "optimizer") == ["__0_0.distcp"]
    (tmp_path / "optimizer" / ".metadata").unlink()
    assert missing_shards(tmp_path / "optimizer") == [".metadata"]


def _rollout_worker_processes(since: float) -> list:
    """Ray rollout-worker processes started after `since` (time.time())."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "create_time"]):
        command = " ".join(process.info["cmdline"] or [])
        if "RolloutWorker" in command and process.info["create_time"] >= since:
            found.append(process)
    return found


@pytest.mark.ray
def test_an_asynchronous_run_killed_mid_training_resumes_to_the_same_metrics_and_weights(llama_dir, tmp_path):
    # max_staleness 1 on one rollout worker: step s is sampled by version s-2, ahead of the learner. The step-4
    # checkpoint holds the batches in flight (steps 5 and 6, sampled by versions 3 and 4, log-probabilities and
    # rewards included), so a run SIGKILLed during step 6 and resumed trains on the same samples and writes the
    # uninterrupted run's metrics and final weights. The killed run's worker does not outlive it.
    data_path, launcher = _data_and_launcher(tmp_path)
    settings = _settings(llama_dir, data_path) + ["--rollout-workers", "1", "--ray-worker-cpus", "0.5",
                                                  "--max-staleness", "1", "--rollout-correction", "tis"]
    timing = ("async/learner_idle_fraction", "async/generator_idle_fraction")  # wall-clock shares

    def records(run):
        return [{k: v for k, v in record.items() if k not in timing} for record in _records(run)]

    reference = tmp_path / "reference"
    process, log = _launch(launcher, settings + ["--output-dir", str(reference)], tmp_path / "reference.log")
    assert process.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    log.close()
    expected = records(reference)
    assert [r["async/staleness_max"] for r in expected if "async/staleness_max" in r] == [0] + [1] * 7
    run, log_path = tmp_path / "killed", tmp_path / "killed.log"
    started = time.time()
    process, log = _launch(launcher, settings + ["--output-dir", str(run)], log_path)
    lines_through_step_5 = [r["step"] for r in expected].index(5) + 1  # step 4's checkpoint is complete by then
    assert _signal_at(process, run / "metrics.jsonl", lines_through_step_5, 0.05, signal.SIGKILL)
    process.wait(timeout=60)
    log.close()
    deadline = time.time() + 60
    while _rollout_worker_processes(started) and time.time() < deadline:
        time.sleep(0.5)
    assert not _rollout_worker_processes(started), "the killed run's rollout worker is still running"
    assert [int(p.name[5:]) for p in list_checkpoints(run)] == [2, 4]
    in_flight = torch.load(latest_checkpoint(run) / "trainer_state.pt", weights_only=True)["in_flight"]
    assert [batch["versions"] for batch in in_flight] == [[3] * 6, [4] * 6]  # steps 5 and 6, 2 prompts x 3
    assert all(len(logprobs) == len(completion) for batch in in_flight
               for logprobs, completion in zip(batch["engine_logprobs"], batch["completions"]))
    assert _resumed_difference(launcher, run, log_path, reference, expected, records) <= 1e-6
