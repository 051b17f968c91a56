"""Tests of r1zero.rewards.pool: rewards in worker processes, killed and replaced at a hard limit per sample."""

import os
import time

import pytest

from r1zero.example import Example
from r1zero.rewards import RewardScorer, math_reward
from r1zero.rewards.pool import ScoringPool

HALF = Example(id="math-1", prompt="?", answer="\\frac{1}{2}")
LIMIT = 2.0  # seconds per sample in these tests


def test_results_come_back_in_order_from_other_processes(hostile):
    delays = ["0.6", "0.0", "0.3", "0.01"]
    with ScoringPool(workers=2, time_limit_seconds=LIMIT) as pool:
        # the first call sleeps longest, so its result arrives last: the second worker finishes the other three
        # first; each result says which call it answers
        scores = pool.run([(hostile["echo"], delay, HALF) for delay in delays])
    assert [float(s) for s in scores] == [1.0] * 4
    assert [s.reason.split(" from ")[0] for s in scores] == delays  # in the order of the calls
    pids = {s.reason.split(" from ")[1] for s in scores}
    assert str(os.getpid()) not in pids and 1 <= len(pids) <= 2  # two workers, never this process


def test_a_hanging_reward_is_killed_at_the_limit_and_its_worker_replaced(hostile):
    with ScoringPool(workers=2, time_limit_seconds=LIMIT) as pool:
        pool.run([(hostile["pid"], "0", HALF)])  # both workers started and warm
        started = time.monotonic()
        scores = pool.run([(hostile["hang"], "", HALF), (hostile["pid"], "0", HALF), (hostile["hang"], "", HALF)])
        elapsed = time.monotonic() - started
        assert [(float(s), s.reason, s.failure) for s in scores[::2]] == [(0.0, "timeout", "timeout")] * 2
        assert float(scores[1]) == 1.0
        # killed at the limit, not before; the upper bound only catches a hang that is never killed (it sleeps 60 s)
        # and leaves a loaded machine room to start the replacement workers
        assert LIMIT <= elapsed < 2 * LIMIT + 20
        assert pool.replaced == 2
        after = pool.run([(hostile["pid"], "0", HALF)])  # the replacements work
        assert float(after[0]) == 1.0 and after[0].reason not in {s.reason for s in scores}


def test_a_worker_that_dies_scores_its_sample_as_an_exception(hostile):
    with ScoringPool(workers=1, time_limit_seconds=LIMIT) as pool:
        scores = pool.run([(hostile["crash"], "", HALF), (hostile["pid"], "0", HALF)])
        assert (float(scores[0]), scores[0].failure) == (0.0, "exception")
        assert scores[0].reason == "scoring worker died (exit code 3)"
        assert float(scores[1]) == 1.0 and pool.replaced == 1


def test_a_huge_allocation_fails_inside_the_worker(hostile):
    with ScoringPool(workers=1, time_limit_seconds=LIMIT) as pool:
        (score,) = pool.run([(hostile["allocate"], "", HALF)])
    assert (float(score), score.reason, score.failure) == (0.0, "MemoryError: ", "exception")


# Pathological answers. The nested fractions and the megabyte of additions make math-verify (sympy) run far longer
# than any limit, in code a signal cannot always stop (measured: both time out); the exponent towers are answered
# "wrong answer" quickly. All must score 0 within the limit.
PATHOLOGICAL = {
    "huge exponent": "9^9^9^9",
    "deeply nested fractions": "\\frac{" * 3000 + "1" + "}{2}" * 3000,
    "a megabyte of additions": "1+" * 500_000 + "1",
    "nested exponent tower": "9^{" * 200 + "9" + "}" * 200,
}


def test_pathological_math_answers_score_zero_within_the_limit():
    completions = [f"<answer> {answer} </answer>" for answer in PATHOLOGICAL.values()]
    completions.append("<answer> 0.5 </answer>")  # a normal answer in the same batch is still scored right
    with RewardScorer({"accuracy": 1.0}, "math", time_limit_seconds=LIMIT, workers=2) as scorer:
        scorer(["<answer> 0.5 </answer>"], [HALF])  # start and warm the workers
        started = time.monotonic()
        batch = scorer(completions, [HALF] * len(completions))
        elapsed = time.monotonic() - started
    assert batch.components["accuracy"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    # 4 samples on 2 workers: two rounds of the limit, plus restarting killed workers; the margin is for a loaded
    # machine: the bound only catches an answer that is never stopped
    assert elapsed < 2 * LIMIT + 20
    timeouts = batch.health["reward_health/accuracy/timeouts"]
    assert batch.reasons["accuracy"][:4].count("timeout") == timeouts >= 2
    assert batch.reasons["accuracy"][4] == "correct"


def test_math_in_the_pool_agrees_with_math_in_process():
    cases = [("0.5", "\\frac{1}{2}"), ("\\boxed{1/3}", "\\frac{1}{2}"), ("x^2", "$x^2$"), ("2x", "2"), ("", "2")]
    completions = [f"<answer>{answer}</answer>" for answer, _ in cases]
    examples = [Example(id=f"m{i}", prompt="?", answer=gold) for i, (_, gold) in enumerate(cases)]
    with RewardScorer({"math": 1.0}, "math", time_limit_seconds=10, workers=1) as scorer:
        batch = scorer(completions, examples)
    in_process = [math_reward(c, e) for c, e in zip(completions, examples)]
    assert batch.components["math"] == [float(s) for s in in_process] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert batch.reasons["math"] == [s.reason for s in in_process]


def test_pool_settings_are_checked():
    with pytest.raises(ValueError, match="workers >= 1 and time_limit_seconds > 0"):
        ScoringPool(workers=0, time_limit_seconds=1)
