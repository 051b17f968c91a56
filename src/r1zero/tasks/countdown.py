"""Countdown, TinyZero's task: reach the target with each given number used once and + - * /.

    r1zero train --config recipes/countdown.yaml --model path/to/base-model

"Using the numbers [19, 36, 55, 7], create an equation that equals 65." (TinyZero's question, from
examples/data_preprocess/countdown.py of github.com/Jiayi-Pan/TinyZero; its data is the Hugging Face set
Jiayi-Pan/Countdown-Tasks-3to4, 3 or 4 numbers per problem.) Problems here are generated, not downloaded: 3 or 4
numbers from 1 to 99 are combined in a random order with random operations, every intermediate result a positive
integer (so division is exact), and the final result, between 1 and 100, is the target. Every problem therefore
has a solution; the one found is kept as Example.answer, for reading only (the checker accepts any equation).

Held-out split. A fixed hash of (sorted numbers, target) puts one problem in eight in the test split; training
never samples those.
"""

from __future__ import annotations

import hashlib
import random

from r1zero.example import Example

NAME = "countdown"
ACCURACY_REWARD = "countdown"
MIN_NUMBERS, MAX_NUMBERS = 3, 4
MIN_NUMBER, MAX_NUMBER = 1, 99
MIN_TARGET, MAX_TARGET = 1, 100
TEST_SHARE = 8  # one problem in TEST_SHARE is held out


def is_held_out(numbers: list[int], target: int) -> bool:
    """True when the problem belongs to the test split (stable across runs, machines and number order)."""
    key = " ".join(map(str, sorted(numbers))) + f" -> {target}"
    return hashlib.sha256(key.encode()).digest()[0] % TEST_SHARE == 0


def question(numbers: list[int], target: int) -> str:
    """TinyZero's question, without its tag instructions (the r1zero template gives those)."""
    return (f"Using the numbers {numbers}, create an equation that equals {target}. You can use basic arithmetic "
            f"operations (+, -, *, /) and each number can only be used once.")


def random_problem(rng: random.Random) -> tuple[list[int], int, str]:
    """(numbers, target, one solution) with a solution by construction; rejection-samples until the target is in
    range."""
    while True:
        numbers = [rng.randint(MIN_NUMBER, MAX_NUMBER) for _ in range(rng.randint(MIN_NUMBERS, MAX_NUMBERS))]
        order = numbers[:]
        rng.shuffle(order)
        value, expression = order[0], str(order[0])
        for number in order[1:]:
            operation = rng.choice("+-*/")
            if operation == "+":
                value = value + number
            elif operation == "-":
                if value - number <= 0:
                    break
                value = value - number
            elif operation == "*":
                value = value * number
            else:
                if value % number:
                    break
                value = value // number
            expression = f"({expression} {operation} {number})"
        else:
            if MIN_TARGET <= value <= MAX_TARGET:
                return numbers, value, expression[1:-1] if expression.startswith("(") else expression


def make_example(numbers: list[int], target: int, solution: str, split: str, index: int) -> Example:
    return Example(id=f"{NAME}-{split}-{index}", prompt=question(numbers, target), answer=solution,
                   metadata={"numbers": numbers, "target": target})


def sample_train(rng: random.Random, count: int) -> list[Example]:
    """`count` training problems drawn with `rng` (held-out problems are rejected)."""
    examples = []
    while len(examples) < count:
        numbers, target, solution = random_problem(rng)
        if not is_held_out(numbers, target):
            examples.append(make_example(numbers, target, solution, "train", len(examples)))
    return examples


def held_out(count: int, seed: int = 1234) -> list[Example]:
    """The first `count` distinct held-out problems, in a fixed order that depends only on `seed`."""
    rng = random.Random(seed)
    seen: set[tuple] = set()
    examples = []
    while len(examples) < count:
        numbers, target, solution = random_problem(rng)
        key = (tuple(sorted(numbers)), target)
        if is_held_out(numbers, target) and key not in seen:
            seen.add(key)
            examples.append(make_example(numbers, target, solution, "test", len(examples)))
    return examples
