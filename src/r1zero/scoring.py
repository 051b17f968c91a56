"""Offline scoring of completions: what `r1zero score` runs.

    r1zero score --reward math,format=0.5 --input completions.jsonl --output scored.jsonl

Each input row is a JSON object with "completion" (the model's text after the prompt) and the example's fields
the rewards need: "answer" for math and integer, "numbers" and "target" for countdown, "tests" and/or "asserts"
for code; "prompt" is optional, any other field is kept in the example's metadata. Each output line, in input
order, is

    {"row": 3, "score": 1.5, "rewards": {"math": {"score": 1.0, "reason": "correct"},
                                         "format": {"score": 1.0, "reason": "well formed"}}}

where "row" is the input line number and "score" the weighted total. The rewards run exactly as in training
(the math and code rewards in the scoring pool, with its hard per-sample limit), except that a reward failing on
every row does not stop the scoring: each row says why.
"""

from __future__ import annotations

import json
from pathlib import Path

from r1zero.example import Example
from r1zero.rewards import ACCURACY, EXAMPLE_CHECKS, RewardScorer
from r1zero.tasks.jsonl import DataError, iter_jsonl_records


def parse_reward_weights(text: str) -> dict[str, float]:
    """"math,format=0.5" -> {"math": 1.0, "format": 0.5}: names with optional weights (default 1).

    >>> parse_reward_weights("math,format=0.5")
    {'math': 1.0, 'format': 0.5}
    """
    weights = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, _, weight = item.partition("=")
        try:
            weights[name.strip()] = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"--reward: the weight of {name.strip()!r} is {weight!r}, not a number; give NAME or "
                             f"NAME=WEIGHT, e.g. math,format=0.5") from None
    if not weights:
        raise ValueError("--reward: give at least one reward, e.g. --reward math or --reward math,format=0.5")
    if ACCURACY in weights:
        raise ValueError("--reward: 'accuracy' means a task's checker, and there is no task here; name the checker: "
                         "math, integer, countdown or code")
    return weights


def read_completions(path: str | Path, reward_names: list[str]) -> tuple[list[int], list[str], list[Example]]:
    """(line numbers, completions, examples) of a JSONL file of completions; DataError naming the file, line and
    field for a row that lacks what one of the named rewards needs."""
    path = Path(path)
    lines, completions, examples = [], [], []
    for row, record in iter_jsonl_records(path):
        where = f"{path}:{row}"
        completion = record.pop("completion", None)
        if not isinstance(completion, str):
            raise DataError(f"{where}: field 'completion' is {'missing' if completion is None else 'not a string'}; "
                            f"each row needs the model's text as \"completion\"")
        prompt, answer = record.pop("prompt", ""), record.pop("answer", "")
        for field, value in (("prompt", prompt), ("answer", answer)):
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise DataError(f"{where}: field '{field}' is a {type(value).__name__}; give a string or a number")
        example = Example(id=f"{path.name}:{row}", prompt=str(prompt).strip(), answer=str(answer).strip(),
                          metadata=record)
        for name in reward_names:
            problem = EXAMPLE_CHECKS[name](example) if name in EXAMPLE_CHECKS else None
            if problem is not None:
                raise DataError(f"{where}: {problem} (needed by the {name} reward)")
        lines.append(row)
        completions.append(completion)
        examples.append(example)
    if not lines:
        raise DataError(f"{path}: no rows; give one JSON object per line with \"completion\" and the example's fields")
    return lines, completions, examples


def score_completions(path: str | Path, weights: dict[str, float], time_limit_seconds: float = 10.0,
                      workers: int = 0, code_partial_credit: bool = True,
                      code_test_timeout_seconds: float = 2.0) -> tuple[list[dict], dict[str, int]]:
    """One output record per input row (see the module docstring), and the reward-health counts over all rows."""
    lines, completions, examples = read_completions(path, list(weights))
    with RewardScorer(weights, accuracy_function="math", time_limit_seconds=time_limit_seconds, workers=workers,
                      code_partial_credit=code_partial_credit, code_test_timeout_seconds=code_test_timeout_seconds,
                      stop_when_all_fail=False) as scorer:
        batch = scorer(completions, examples)
    records = [
        {"row": line, "score": batch.total[i],
         "rewards": {name: {"score": batch.components[name][i], "reason": batch.reasons[name][i]}
                     for name in batch.components}}
        for i, line in enumerate(lines)
    ]
    return records, batch.health


def health_summary(health: dict[str, int]) -> str:
    """"math: 2 timeouts; format: no failures" from RewardBatch.health."""
    parts: dict[str, list[str]] = {}
    for key, count in health.items():
        name, _, counter = key.removeprefix("reward_health/").rpartition("/")
        parts.setdefault(name, [])
        if count:
            parts[name].append(f"{count} {counter}")
    return "; ".join(f"{name}: {', '.join(items) or 'no failures'}" for name, items in parts.items())


def write_records(records: list[dict], stream) -> None:
    for record in records:
        stream.write(json.dumps(record) + "\n")
