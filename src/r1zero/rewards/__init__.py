"""Rule-based rewards, never a neural reward model (DeepSeek-R1 paper, section 2.2.2).

    scorer = RewardScorer({"accuracy": 1.0, "format": 0.5}, accuracy_function="math")
    batch = scorer(completions, examples)   # batch.total, batch.components["format"], batch.reasons, batch.health
    scorer.close()                          # stops the scoring pool's worker processes, if any were started

A reward is a pure function (completion, example) -> float, where completion is the model's text after the prompt.
It may return a `Score` (a float with a reason) or a (float, reason) pair; the scorer normalises all three.
Rewards know nothing of models or tokenizers. Cheap pure rewards (format, integer, countdown) run in-process;
rewards marked `needs_isolation` (math, code) run in a ScoringPool of worker processes with a hard time limit per
sample. Names in the weights may also be your own rewards: "path/to/file.py:function" or "module:function"
(r1zero.rewards.custom).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import NamedTuple

from r1zero.example import Example
from r1zero.rewards.code import check_code_example, code_reward
from r1zero.rewards.countdown import check_countdown_example, countdown_reward
from r1zero.rewards.custom import is_custom_reward_name, load_reward_function
from r1zero.rewards.exact import integer_reward
from r1zero.rewards.format import extract_answer, format_reward
from r1zero.rewards.math import math_reward
from r1zero.rewards.pool import ScoringPool, default_workers
from r1zero.rewards.score import EXCEPTION, HEALTH_COUNTERS, Score, as_score

RewardFunction = Callable[[str, Example], float]

REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    "format": format_reward,
    "integer": integer_reward,
    "math": math_reward,
    "countdown": countdown_reward,
    "code": code_reward,
}

# What each built-in checker needs in an example, as a function returning the problem (naming the field) or None.
EXAMPLE_CHECKS: dict[str, Callable[[Example], str | None]] = {
    "integer": lambda example: None if example.answer.strip() else "field 'answer' is missing or empty",
    "math": lambda example: None if example.answer.strip() else "field 'answer' is missing or empty",
    "countdown": check_countdown_example,
    "code": check_code_example,
}

# The component name that stands for the task's own checker (RewardScorer's accuracy_function).
ACCURACY = "accuracy"
# Seconds the code reward keeps back from the pool's per-sample limit for process start-up and sandbox set-up.
CODE_BUDGET_MARGIN_SECONDS = 1.0


class RewardError(ValueError):
    """A reward raised on every sample of a batch: a bug in the reward or the data, not a wrong completion."""


def get_reward_function(name: str) -> RewardFunction:
    """The reward function registered under name; ValueError listing the valid names otherwise."""
    if name not in REWARD_FUNCTIONS:
        raise ValueError(f"unknown reward function {name!r}; valid names: {', '.join(REWARD_FUNCTIONS)}")
    return REWARD_FUNCTIONS[name]


def needs_isolation(function) -> bool:
    """True when a reward asks to run in the scoring pool (attribute needs_isolation, also through partial)."""
    if isinstance(function, functools.partial):
        return needs_isolation(function.func)
    return bool(getattr(function, "needs_isolation", False))


class RewardBatch(NamedTuple):
    """Scores of N completions."""

    total: list[float]  # (N,) weighted sum of the components
    components: dict[str, list[float]]  # component name -> (N,) unweighted scores
    reasons: dict[str, list[str]] = {}  # component name -> (N,) why each score ("wrong answer", "timeout", ...)
    health: dict[str, int] = {}  # "reward_health/<component>/<timeouts|parse_failures|exceptions>" -> count


class RewardScorer:
    """Weighted sum of named reward components, e.g. {"accuracy": 1.0, "format": 0.5}.

    total_i = sum over components c of weights[c] * reward_c(completion_i, example_i)

    "accuracy" is the task's checker, named by accuracy_function (a key of REWARD_FUNCTIONS); every other
    component name is a key of REWARD_FUNCTIONS or a custom reward ("file.py:function", "module:function").
    Names are checked here, at construction, so a typo fails before any generation.

    time_limit_seconds is the hard wall-clock limit per sample of isolated rewards (math, code, custom rewards
    with needs_isolation), enforced by killing the pool worker; workers is the pool's size (0: min(4, cores)); the
    pool starts on the first isolated call. code_partial_credit and code_test_timeout_seconds configure the code
    reward (its whole call is budgeted to time_limit_seconds minus CODE_BUDGET_MARGIN_SECONDS). pool_factory(workers,
    time_limit_seconds, preload=...) makes the pool: ScoringPool, or r1zero.distributed.RayScoringPool (Ray actors,
    each with a ScoringPool inside) when Ray is on. A sample on which a reward raises scores 0 and is counted in
    health; with stop_when_all_fail, a component that raises on every sample of a call raises RewardError naming
    it.
    """

    def __init__(self, weights: dict[str, float], accuracy_function: str, *, time_limit_seconds: float = 10.0,
                 workers: int = 0, code_partial_credit: bool = True, code_test_timeout_seconds: float = 2.0,
                 stop_when_all_fail: bool = True, pool_factory=ScoringPool):
        if not weights:
            raise ValueError('reward weights are empty; give at least one, e.g. {"accuracy": 1.0, "format": 0.5}')
        valid_names = [ACCURACY, *REWARD_FUNCTIONS, "file.py:function", "module:function"]
        self.weights = dict(weights)
        self.time_limit_seconds = time_limit_seconds
        self.workers = workers or default_workers()
        self.stop_when_all_fail = stop_when_all_fail
        self.functions: dict[str, RewardFunction] = {}
        for name in self.weights:
            if name == ACCURACY:
                function = get_reward_function(accuracy_function)
            elif name in REWARD_FUNCTIONS:
                function = REWARD_FUNCTIONS[name]
            elif is_custom_reward_name(name):
                function = load_reward_function(name)
            else:
                raise ValueError(f"unknown reward component {name!r}; valid components: {', '.join(valid_names)}")
            if function is code_reward:
                function = functools.partial(
                    code_reward, partial_credit=code_partial_credit, test_timeout_seconds=code_test_timeout_seconds,
                    budget_seconds=max(0.1, time_limit_seconds - CODE_BUDGET_MARGIN_SECONDS))
            if needs_isolation(function):
                try:
                    pickle.dumps(function)
                except Exception as error:
                    raise ValueError(f"reward {name!r} asks for isolation but cannot be sent to a worker process "
                                     f"({error}); define it at module level") from None
            self.functions[name] = function
        self.pool_factory = pool_factory
        self._pool = None

    def __call__(self, completions: list[str], examples: list[Example]) -> RewardBatch:
        if len(completions) != len(examples):
            raise ValueError(
                f"{len(completions)} completions but {len(examples)} examples; "
                "give one example per completion (repeat a prompt's example for each of its samples)"
            )
        isolated = [name for name, function in self.functions.items() if needs_isolation(function)]
        scores: dict[str, list[Score]] = {}
        if isolated and completions:
            calls = [(self.functions[name], completion, example)
                     for name in isolated for completion, example in zip(completions, examples)]
            flat = self._get_pool().run(calls)
            for position, name in enumerate(isolated):
                scores[name] = flat[position * len(completions):(position + 1) * len(completions)]
        for name, function in self.functions.items():
            if name not in isolated:
                scores[name] = [_score_in_process(function, c, e) for c, e in zip(completions, examples)]
        scores = {name: scores[name] for name in self.functions}  # in the order of the weights

        health = {f"reward_health/{name}/{counter}": sum(score.failure == failure for score in values)
                  for name, values in scores.items() for failure, counter in HEALTH_COUNTERS.items()}
        if self.stop_when_all_fail:
            for name, values in scores.items():
                if values and all(score.failure == EXCEPTION for score in values):
                    raise RewardError(f"reward {name!r} raised on all {len(values)} samples of this step, e.g. "
                                      f"{values[0].reason}; fix the reward or the data (a reward may raise on a "
                                      f"sample, which then scores 0, but not on every one)")
        components = {name: [float(score) for score in values] for name, values in scores.items()}  # name -> (N,)
        total = [
            sum(self.weights[name] * values[i] for name, values in components.items())
            for i in range(len(completions))
        ]  # (N,)
        reasons = {name: [score.reason for score in values] for name, values in scores.items()}
        return RewardBatch(total=total, components=components, reasons=reasons, health=health)

    def _get_pool(self):
        if self._pool is None:
            modules = {_module_of(function) for function in self.functions.values() if needs_isolation(function)}
            self._pool = self.pool_factory(self.workers, self.time_limit_seconds,
                                           preload=sorted(m for m in modules if m))
        return self._pool

    def close(self) -> None:
        """Stop the scoring pool's workers (a later call starts a new pool)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _score_in_process(function: RewardFunction, completion: str, example: Example) -> Score:
    try:
        return as_score(function(completion, example))
    except Exception as error:  # one sample's 0, counted; RewardScorer stops if it happens on every sample
        return Score(0.0, f"{type(error).__name__}: {str(error)[:200]}", EXCEPTION)


def _module_of(function) -> str | None:
    """The module a worker should import before its first call (None for file-based rewards)."""
    if isinstance(function, functools.partial):
        return _module_of(function.func)
    module = getattr(function, "__module__", None)
    return module if module and module != "__main__" and not module.startswith("r1zero_custom_reward_") else None


__all__ = [
    "ACCURACY",
    "EXAMPLE_CHECKS",
    "REWARD_FUNCTIONS",
    "RewardBatch",
    "RewardError",
    "RewardFunction",
    "RewardScorer",
    "Score",
    "ScoringPool",
    "code_reward",
    "countdown_reward",
    "extract_answer",
    "format_reward",
    "get_reward_function",
    "integer_reward",
    "load_reward_function",
    "math_reward",
    "needs_isolation",
]
