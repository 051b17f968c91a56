"""The built-in tool task: add two two-digit numbers, "What is 47 + 85".

    r1zero train --config recipes/tools.yaml        # the tool base model on this task, with --tools python

Why this task. The tool base model (`model: builtin-tools`, r1zero.pretrain's "tools" corpus) cannot add two
two-digit numbers in its head: each total is one token of its vocabulary and it has never seen one stated, only
shown by a program. One line of Python does it: `<python> print ( 47 + 85 ) </python>` shows `<output> 132
</output>`, and the answer is that number copied. The model knows the call syntax the way real base models know
Python: from documents of its corpus that compute sums with a call, outside the prompt template; in the template
it has only ever answered one-digit sums, never with a call. Whether RL discovers that calling the tool inside
<think> pays is the tool-integrated reasoning finding (ToRL, SimpleTIR) in miniature.

Held-out split. A fixed hash of the pair puts one pair in eight in the test split; test pairs never appear in
training prompts nor anywhere in the corpus (r1zero.pretrain checks this).
"""

from __future__ import annotations

import hashlib
import random

from r1zero.example import Example

NAME = "pair_sums"
ACCURACY_REWARD = "integer"
LOW, HIGH = 10, 99  # both terms
TEST_SHARE = 8  # one pair in TEST_SHARE is held out
LARGEST = 2 * HIGH  # the largest total: every number up to it is one token of the tool model's vocabulary


def is_held_out(pair: tuple[int, int]) -> bool:
    """True when the pair belongs to the test split (stable across runs and machines)."""
    return hashlib.sha256(f"pair {pair[0]} {pair[1]}".encode()).digest()[0] % TEST_SHARE == 0


def question(pair: tuple[int, int]) -> str:
    """The question text: "What is 47 + 85"."""
    return f"What is {pair[0]} + {pair[1]}"


def make_example(pair: tuple[int, int], split: str, index: int) -> Example:
    return Example(id=f"{NAME}-{split}-{index}", prompt=question(pair), answer=str(sum(pair)),
                   metadata={"numbers": list(pair)})


def random_pair(rng: random.Random) -> tuple[int, int]:
    return rng.randint(LOW, HIGH), rng.randint(LOW, HIGH)


def sample_train_pair(rng: random.Random) -> tuple[int, int]:
    """A random pair from the training split (rejection-samples held-out pairs)."""
    while True:
        pair = random_pair(rng)
        if not is_held_out(pair):
            return pair


def sample_train(rng: random.Random, count: int) -> list[Example]:
    """`count` training problems drawn with `rng` (with replacement)."""
    return [make_example(sample_train_pair(rng), "train", i) for i in range(count)]


def held_out(count: int, seed: int = 1234) -> list[Example]:
    """The first `count` distinct held-out problems, in a fixed order that depends only on `seed`."""
    rng, seen, examples = random.Random(seed), set(), []
    while len(examples) < count:
        pair = random_pair(rng)
        if is_held_out(pair) and pair not in seen:
            seen.add(pair)
            examples.append(make_example(pair, "test", len(examples)))
    return examples
