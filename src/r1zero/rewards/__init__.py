"""Rule-based rewards, never a neural reward model (DeepSeek-R1 paper, section 2.2.2).

    scorer = RewardScorer({"accuracy": 1.0, "format": 0.5}, accuracy_function="math")
    batch = scorer(completions, examples)   # batch.total, batch.components["format"]

A reward is a pure function (completion, example) -> float, where completion is the model's text
after the prompt. Rewards know nothing of models or tokenizers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from r1zero.example import Example
from r1zero.rewards.exact import integer_reward
from r1zero.rewards.format import extract_answer, format_reward
from r1zero.rewards.math import math_reward

RewardFunction = Callable[[str, Example], float]

REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    "format": format_reward,
    "integer": integer_reward,
    "math": math_reward,
}

# The component name that stands for the task's own checker (RewardScorer's accuracy_function).
ACCURACY = "accuracy"


def get_reward_function(name: str) -> RewardFunction:
    """The reward function registered under name; ValueError listing the valid names otherwise."""
    if name not in REWARD_FUNCTIONS:
        raise ValueError(f"unknown reward function {name!r}; valid names: {', '.join(REWARD_FUNCTIONS)}")
    return REWARD_FUNCTIONS[name]


class RewardBatch(NamedTuple):
    """Scores of N completions."""

    total: list[float]  # (N,) weighted sum of the components
    components: dict[str, list[float]]  # component name -> (N,) unweighted scores


class RewardScorer:
    """Weighted sum of named reward components, e.g. {"accuracy": 1.0, "format": 0.5}.

    total_i = sum over components c of weights[c] * reward_c(completion_i, example_i)

    "accuracy" is the task's checker, named by accuracy_function ("integer" or "math"); every
    other component name is a key of REWARD_FUNCTIONS. Names are checked here, at construction,
    so a typo fails before any generation.
    """

    def __init__(self, weights: dict[str, float], accuracy_function: str):
        if not weights:
            raise ValueError('reward weights are empty; give at least one, e.g. {"accuracy": 1.0, "format": 0.5}')
        valid_names = [ACCURACY, *REWARD_FUNCTIONS]
        self.weights = dict(weights)
        self.functions: dict[str, RewardFunction] = {}
        for name in self.weights:
            if name == ACCURACY:
                self.functions[name] = get_reward_function(accuracy_function)
            elif name in REWARD_FUNCTIONS:
                self.functions[name] = REWARD_FUNCTIONS[name]
            else:
                raise ValueError(f"unknown reward component {name!r}; valid components: {', '.join(valid_names)}")

    def __call__(self, completions: list[str], examples: list[Example]) -> RewardBatch:
        if len(completions) != len(examples):
            raise ValueError(
                f"{len(completions)} completions but {len(examples)} examples; "
                "give one example per completion (repeat a prompt's example for each of its samples)"
            )
        components = {
            name: [float(function(completion, example)) for completion, example in zip(completions, examples)]
            for name, function in self.functions.items()
        }  # name -> (N,)
        total = [
            sum(self.weights[name] * scores[i] for name, scores in components.items())
            for i in range(len(completions))
        ]  # (N,)
        return RewardBatch(total=total, components=components)


__all__ = [
    "ACCURACY",
    "REWARD_FUNCTIONS",
    "RewardBatch",
    "RewardFunction",
    "RewardScorer",
    "extract_answer",
    "format_reward",
    "get_reward_function",
    "integer_reward",
    "math_reward",
]
