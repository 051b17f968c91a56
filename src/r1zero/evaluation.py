"""Held-out evaluation: greedy accuracy, sampled pass@1, pass@k, maj@K, format rate, response length.

    r1zero eval --model runs/x/final --samples 8 --output eval.json   # (CLI in cli.py)

Used inside training (every eval_every steps, at step 0 and at the end) and by `r1zero eval`. Each
problem gets one greedy answer and K sampled answers (K = `samples`, at the training temperature).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from r1zero.algorithms import pass_at_k
from r1zero.example import Example
from r1zero.rewards import RewardFunction, get_reward_function
from r1zero.rewards.format import ANSWER_CLOSE, ANSWER_OPEN, extract_answer, format_reward


class Evaluation(NamedTuple):
    """The result of `evaluate`.

    metrics: the logged numbers, keys "eval/..." (see `evaluate`).
    samples: one record per sampled completion, problem by problem, in sample order:
        {"problem_id": str, "sample_index": int, "completion": str, "answer": str | None,
         "correct": bool, "format": float}
    where "answer" is the text in <answer> (None without one), "correct" says whether the task's accuracy
    reward gave 1.0, and "format" is the strict format reward. With tools, "completion" holds the tools' output
    too, the scores read what the model wrote (r1zero.rollout.model_text), and "tool_calls" lists each call's
    status in order.
    """

    metrics: dict[str, float]
    samples: list[dict]

    def write_samples(self, path: str | Path) -> Path:
        """Write `samples` as JSON Lines to `path` (parent folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(record) + "\n" for record in self.samples), encoding="utf-8")
        return path


def pass_at_k_sizes(samples: int) -> list[int]:
    """The k of the reported pass@k: powers of two below `samples`, then `samples` itself.

    >>> pass_at_k_sizes(8), pass_at_k_sizes(6), pass_at_k_sizes(1)
    ([1, 2, 4, 8], [1, 2, 4, 6], [1])
    """
    sizes, k = [], 1
    while k < samples:
        sizes.append(k)
        k *= 2
    return sizes + [samples]


def same_answer(accuracy: RewardFunction, answer: str, reference: str) -> bool:
    """True when `accuracy` judges `answer` correct with `reference` as the gold answer.

    This is the vote equivalence of maj@K: for the integer reward it is integer equality ("07" and "+7"
    agree), for the math reward math-verify equivalence ("0.5" and "\\frac{1}{2}" agree). A reference the
    reward cannot take as gold (the integer reward raises ValueError on "seven") agrees only with the same
    text.

    >>> from r1zero.rewards import integer_reward
    >>> same_answer(integer_reward, "07", "7"), same_answer(integer_reward, "seven", "seven")
    (True, True)
    """
    if answer == reference:
        return True
    completion = f"{ANSWER_OPEN} {answer} {ANSWER_CLOSE}"
    try:
        return accuracy(completion, Example(id="vote", prompt="", answer=reference)) == 1.0
    except ValueError:
        return False


def majority_vote(answers: list[str | None], accuracy: RewardFunction) -> int | None:
    """Index of one answer of the largest group of agreeing answers; None when no answer was given.

    Answers are grouped one by one: an answer joins the first group whose first member it agrees with
    (`same_answer`, the first member taken as reference), else it starts a new group. Missing answers (None)
    never vote. Ties go to the group formed first, i.e. the one whose first answer came earliest.

    >>> from r1zero.rewards import integer_reward
    >>> majority_vote(["8", "07", None, "+7", "8", "7"], integer_reward)  # "7" x3 beats "8" x2
    1
    """
    groups: list[list[int]] = []  # indexes into answers; groups[g][0] is the group's reference
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        group = next((g for g in groups if same_answer(accuracy, answer, answers[g[0]])), None)
        if group is None:
            groups.append([index])
        else:
            group.append(index)
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal lengths


def evaluate(engine, tokenizer, prompts: list[list[int]], examples: list[Example], accuracy_reward: str,
             samples: int, temperature: float, max_new_tokens: int, generator: torch.Generator | None = None,
             chunk: int = 64, prefix: str = "eval/") -> Evaluation:
    """Score one greedy answer and K = `samples` sampled answers per held-out problem. The metric names below
    start with `prefix` ("eval/ood/" for the out-of-distribution split).

    metrics:
    eval/accuracy_greedy  share of problems whose greedy (temperature 0) answer is correct
    eval/pass@1           mean correctness of the sampled answers (at `temperature`)
    eval/pass@k           for k in pass_at_k_sizes(K): mean over problems of the unbiased pass@k
                          1 - C(K - c, k) / C(K, k), c = correct samples of the problem (Chen et al. 2021)
    eval/maj@K            share of problems whose majority-vote answer (`majority_vote`) is correct
                          (DeepSeek-R1 paper, Table 2, cons@64)
    eval/format           share of sampled answers with the strict tag format
    eval/response_length  mean sampled completion length in tokens (tokens the policy sampled: tool output
                          not counted)
    samples: every sampled completion with its scores (see `Evaluation`).
    """
    accuracy = get_reward_function(accuracy_reward)
    greedy_correct, records, lengths = [], [], []
    for start in range(0, len(prompts), chunk):
        batch_prompts, batch_examples = prompts[start:start + chunk], examples[start:start + chunk]
        greedy = engine.generate(batch_prompts, 1, max_new_tokens, 0.0)
        for written, example in zip(greedy.written(tokenizer), batch_examples):
            greedy_correct.append(accuracy(written, example) == 1.0)
        sampled = engine.generate(batch_prompts, samples, max_new_tokens, temperature, generator)
        for index, (completion, written) in enumerate(zip(sampled.completions, sampled.written(tokenizer))):
            example = batch_examples[index // samples]
            text = tokenizer.decode(completion, skip_special_tokens=True)  # with tools: their output included
            record = {"problem_id": example.id, "sample_index": index % samples, "completion": text,
                      "answer": extract_answer(written), "correct": accuracy(written, example) == 1.0,
                      "format": format_reward(written, example)}
            if sampled.tool_calls is not None:
                record["tool_calls"] = [call.status for call in sampled.tool_calls[index]]
            records.append(record)
        lengths += sampled.sampled_lengths()
    problems = [records[i:i + samples] for i in range(0, len(records), samples)]  # (problems, K)
    correct_counts = [sum(r["correct"] for r in problem) for problem in problems]
    majority_correct = []
    for problem in problems:
        winner = majority_vote([r["answer"] for r in problem], accuracy)
        majority_correct.append(winner is not None and problem[winner]["correct"])
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    metrics = {
        f"{prefix}accuracy_greedy": mean(greedy_correct),
        **{f"{prefix}pass@{k}": mean([pass_at_k(samples, c, k) for c in correct_counts])
           for k in pass_at_k_sizes(samples)},
        f"{prefix}maj@{samples}": mean(majority_correct),
        f"{prefix}format": mean([r["format"] for r in records]),
        f"{prefix}response_length": mean(lengths),
    }
    return Evaluation(metrics, records)


# The JSON keys of `r1zero eval` for the logged metric names; pass@k and maj@K drop the "eval/" prefix.
PLAIN_NAMES = {"eval/accuracy_greedy": "greedy_accuracy", "eval/format": "format_rate",
               "eval/response_length": "mean_response_length"}


def plain_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics under the names `r1zero eval` writes: greedy_accuracy, pass@k..., maj@K, format_rate,
    mean_response_length.

    >>> plain_metrics({"eval/accuracy_greedy": 0.5, "eval/pass@2": 0.75})
    {'greedy_accuracy': 0.5, 'pass@2': 0.75}
    """
    return {PLAIN_NAMES.get(key, key.removeprefix("eval/")): value for key, value in metrics.items()}
