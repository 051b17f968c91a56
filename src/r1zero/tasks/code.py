"""Programming problems with tests, written for this project: the built-in task "code".

    r1zero train --config recipes/code.yaml --model path/to/base-model

code_problems.jsonl (next to this file) holds 26 small problems: stdin/stdout programs ("tests") and functions
checked by assert statements ("asserts"), each with a reference solution in "answer" that passes all its tests
(checked by tests/test_tasks.py). Completions are scored by the code reward (r1zero.rewards.code) in the sandbox.

Held-out split. A fixed hash of the problem id puts 9 of the 26 problems in the test split; training never
samples those. With so few problems this task is a plumbing and sandbox check, not a benchmark: train on your own
problems with --dataset FILE.jsonl (rows with "prompt" and "tests"/"asserts") for real use.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import cache
from pathlib import Path

from r1zero.example import Example

NAME = "code"
ACCURACY_REWARD = "code"
PROBLEMS_FILE = Path(__file__).with_name("code_problems.jsonl")
TEST_SHARE = 4  # about one problem in TEST_SHARE is held out


def is_held_out(problem_id: str) -> bool:
    return hashlib.sha256(problem_id.encode()).digest()[0] % TEST_SHARE == 0


@cache
def problems() -> tuple[Example, ...]:
    """Every problem of code_problems.jsonl, in file order."""
    examples = []
    for line in PROBLEMS_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            metadata = {key: row[key] for key in ("tests", "asserts") if key in row}
            examples.append(Example(id=f"{NAME}-{row['id']}", prompt=row["prompt"], answer=row["answer"],
                                    metadata=metadata))
    return tuple(examples)


def sample_train(rng: random.Random, count: int) -> list[Example]:
    """`count` training problems drawn with `rng` (with replacement) from the problems not held out."""
    train = [example for example in problems() if not is_held_out(example.id)]
    return [rng.choice(train) for _ in range(count)]


def held_out(count: int, seed: int = 1234) -> list[Example]:
    """Up to `count` held-out problems (there are 9), in file order."""
    return [example for example in problems() if is_held_out(example.id)][:count]
