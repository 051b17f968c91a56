"""r1zero.batch inside real (tiny) runs: DAPO's dynamic sampling and overlong reward shaping.

    python -m pytest tests/test_batch.py -q
"""

from __future__ import annotations

import pytest
from conftest import read_metrics, tiny_run_config

from r1zero.rewards import REWARD_FUNCTIONS
from r1zero.trainer import train


def test_dynamic_sampling_keeps_only_informative_groups(llama_dir, tmp_path, monkeypatch):
    # reward 1 for prompts whose first number is odd, whatever the completion: those groups are all-equal too.
    # Only a reward that varies inside a group is informative; make it vary for even first numbers only.
    calls = {"n": 0}

    def parity(completion, example):
        calls["n"] += 1
        return float(len(completion) % 2) if example.metadata["numbers"][0] % 2 == 0 else 1.0

    monkeypatch.setitem(REWARD_FUNCTIONS, "parity", parity)
    config = tiny_run_config(llama_dir, tmp_path, reward_weights={"parity": 1.0}, dynamic_sampling=True,
                    max_sampling_rounds=4, prompts_per_step=4, max_steps=3, temperature=1.5)
    steps = [r for r in read_metrics(train(config)) if "reward/mean" in r]
    for record in steps:
        rounds, kept = record["dynamic_sampling/rounds"], record["dynamic_sampling/kept_groups"]
        assert 1 <= rounds <= 4 and 0 <= kept <= 4
        assert kept + record["dynamic_sampling/filled_groups"] == 4
        assert record["dynamic_sampling/dropped_groups"] >= record["dynamic_sampling/filled_groups"]
        # zero-variance groups in the batch are exactly the filling
        assert record["zero_std_fraction"] == pytest.approx(record["dynamic_sampling/filled_groups"] / 4)
    assert sum(r["dynamic_sampling/rounds"] for r in steps) > 3  # some steps needed more than one round
    # every round generated and scored B x G = 16 completions (held-out evaluation scores accuracy only)
    assert calls["n"] == 4 * 4 * sum(r["dynamic_sampling/rounds"] for r in steps)


def test_overlong_penalty_and_truncation_mask(llama_dir, tmp_path, length_reward):
    config = tiny_run_config(llama_dir, tmp_path, overlong_buffer=4, overlong_penalty_factor=0.5, mask_truncated=True,
                    max_steps=2)
    steps = [r for r in read_metrics(train(config)) if "reward/mean" in r]
    for record in steps:
        assert -0.5 <= record["reward/overlong"] <= 0.0
        assert record["reward/mean"] == pytest.approx(record["reward/accuracy"] + 0.5 * record["reward/format"]
                                                      + 2.0 * record["reward/length"] + record["reward/overlong"])
    assert min(r["reward/overlong"] for r in steps) < 0  # a random model runs into the length limit


def test_mask_truncated_takes_cut_off_completions_out_of_the_loss(llama_dir, tmp_path, monkeypatch):
    # One new token at most: at this seed the random model ends none of the step's completions that early, so all are
    # cut off. A reward that differs between completions gives the groups a signal; with mask_truncated none of
    # it reaches the loss (loss 0, gradient 0), without it the same step moves the weights.
    monkeypatch.setitem(REWARD_FUNCTIONS, "characters", lambda completion, example: sum(map(ord, completion)) % 7 / 7)
    steps = {}
    for masked in (True, False):
        config = tiny_run_config(llama_dir, tmp_path / str(masked), reward_weights={"characters": 1.0},
                                 max_new_tokens=1, mask_truncated=masked, max_steps=1, seed=1)
        steps[masked] = next(r for r in read_metrics(train(config)) if "reward/mean" in r)
    for record in steps.values():
        assert record["response/truncated_fraction"] == 1.0 and record["zero_std_fraction"] < 1.0
    assert steps[True]["loss"] == 0.0 and steps[True]["grad_norm"] == 0.0
    assert steps[False]["grad_norm"] > 0.0
