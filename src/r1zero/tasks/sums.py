"""The built-in task: add a short list of one-digit numbers, "What is 3 + 5 + 2 + 7".

    r1zero train                       # trains the built-in base model on this task

Why this task. A tiny model cannot add four numbers in one step (there are 9**4 combinations and it
never saw their totals), but it knows two-number additions ("10 + 7 = 17") and it has seen, in other
contexts, that a list can be folded one step at a time. So it can get the total only by writing the
partial sums out first, e.g. "<think> 3 + 5 + 2 + 7 = 8 + 2 + 7 = 10 + 7 = 17 </think> <answer> 17
</answer>". Whether RL discovers that writing intermediate steps in <think> pays off is the
DeepSeek-R1-Zero finding, in miniature (r1zero.pretrain says what the base model has seen).

Held-out split. Each problem is a tuple of numbers; a fixed hash of the tuple puts one in eight of all
tuples in the test split. Test tuples never appear in training prompts nor anywhere in the
pretraining corpus (r1zero.pretrain checks this).

Out-of-distribution split. Sums of five numbers (OOD_TERMS), one more than any sum in training or in the
corpus; their totals (at most 45) are still single tokens. Whether what RL found is a procedure (work the sum
out, whatever its length) or a habit fitted to three and four numbers shows there.
"""

from __future__ import annotations

import hashlib
import random

from r1zero.example import Example

NAME = "sums"
ACCURACY_REWARD = "integer"
MIN_TERMS, MAX_TERMS = 3, 4
MIN_DIGIT, MAX_DIGIT = 1, 9
TEST_SHARE = 8  # one tuple in TEST_SHARE is held out
OOD_TERMS = 5  # the out-of-distribution split: one number more than training ever shows


def is_held_out(numbers: tuple[int, ...]) -> bool:
    """True when the tuple belongs to the test split (stable across runs and machines)."""
    digest = hashlib.sha256(" ".join(map(str, numbers)).encode()).digest()
    return digest[0] % TEST_SHARE == 0


def question(numbers: tuple[int, ...]) -> str:
    """The question text: "What is 3 + 5 + 2 + 7"."""
    return "What is " + " + ".join(map(str, numbers))


def make_example(numbers: tuple[int, ...], split: str, index: int) -> Example:
    return Example(
        id=f"{NAME}-{split}-{index}",
        prompt=question(numbers),
        answer=str(sum(numbers)),
        metadata={"numbers": list(numbers)},
    )


def random_numbers(rng: random.Random, terms: int | None = None) -> tuple[int, ...]:
    terms = terms or rng.randint(MIN_TERMS, MAX_TERMS)
    return tuple(rng.randint(MIN_DIGIT, MAX_DIGIT) for _ in range(terms))


def sample_train_numbers(rng: random.Random, terms: int | None = None) -> tuple[int, ...]:
    """A random tuple from the training split (rejection-samples held-out tuples)."""
    while True:
        numbers = random_numbers(rng, terms)
        if not is_held_out(numbers):
            return numbers


def sample_train(rng: random.Random, count: int) -> list[Example]:
    """`count` training problems drawn with `rng` (with replacement)."""
    return [make_example(sample_train_numbers(rng), "train", i) for i in range(count)]


def held_out(count: int, seed: int = 1234) -> list[Example]:
    """The first `count` distinct held-out problems, in a fixed order that depends only on `seed`."""
    return distinct_examples(count, random.Random(seed), "test", lambda rng: random_numbers(rng), is_held_out)


def out_of_distribution(count: int, seed: int = 4321) -> list[Example]:
    """The first `count` distinct five-number problems (never seen in training or in the corpus), in a fixed
    order that depends only on `seed`."""
    return distinct_examples(count, random.Random(seed), "ood", lambda rng: random_numbers(rng, OOD_TERMS),
                             lambda numbers: True)


def distinct_examples(count: int, rng: random.Random, split: str, draw, keep) -> list[Example]:
    """`count` examples of distinct tuples drawn with draw(rng) and kept when keep(numbers)."""
    seen: set[tuple[int, ...]] = set()
    examples = []
    while len(examples) < count:
        numbers = draw(rng)
        if keep(numbers) and numbers not in seen:
            seen.add(numbers)
            examples.append(make_example(numbers, split, len(examples)))
    return examples
