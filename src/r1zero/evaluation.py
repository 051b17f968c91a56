"""Held-out evaluation: greedy accuracy, sampled pass@1 and pass@k, format rate, response length.

    r1zero eval --model runs/x/final          # (CLI in cli.py)

Used inside training (every eval_every steps and at step 0) and by `r1zero eval`.
"""

from __future__ import annotations

import torch

from r1zero.algorithms import pass_at_k
from r1zero.example import Example
from r1zero.rewards import get_reward_function
from r1zero.rewards.format import format_reward


def evaluate(engine, tokenizer, prompts: list[list[int]], examples: list[Example], accuracy_reward: str,
             samples: int, temperature: float, max_new_tokens: int, generator: torch.Generator | None = None,
             chunk: int = 64) -> dict[str, float]:
    """Score one greedy answer and `samples` sampled answers per held-out problem.

    eval/accuracy_greedy  share of problems whose greedy answer is correct
    eval/pass@1           mean correctness of the sampled answers (at `temperature`)
    eval/pass@k           unbiased pass@k (Chen et al. 2021) for k = samples
    eval/format           share of sampled answers with the strict tag format
    eval/response_length  mean sampled completion length in tokens
    """
    accuracy = get_reward_function(accuracy_reward)
    greedy_correct, sampled_correct, formatted, lengths = [], [], [], []
    for start in range(0, len(prompts), chunk):
        batch_prompts, batch_examples = prompts[start:start + chunk], examples[start:start + chunk]
        greedy = engine.generate(batch_prompts, 1, max_new_tokens, 0.0)
        for completion, example in zip(greedy.completions, batch_examples):
            greedy_correct.append(accuracy(tokenizer.decode(completion, skip_special_tokens=True), example))
        sampled = engine.generate(batch_prompts, samples, max_new_tokens, temperature, generator)
        for index, completion in enumerate(sampled.completions):
            example = batch_examples[index // samples]
            text = tokenizer.decode(completion, skip_special_tokens=True)
            sampled_correct.append(accuracy(text, example))
            formatted.append(format_reward(text, example))
            lengths.append(len(completion))
    correct_per_problem = [sum(sampled_correct[i:i + samples]) for i in range(0, len(sampled_correct), samples)]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {
        "eval/accuracy_greedy": mean(greedy_correct),
        "eval/pass@1": mean(sampled_correct),
        f"eval/pass@{samples}": mean([pass_at_k(samples, int(c), samples) for c in correct_per_problem]),
        "eval/format": mean(formatted),
        "eval/response_length": mean(lengths),
    }
