"""Exact integer checking: the accuracy reward of the built-in arithmetic task."""

from __future__ import annotations

import re

from r1zero.example import Example
from r1zero.rewards.format import extract_answer
from r1zero.rewards.score import PARSE_FAILURE, Score

# An optional sign and ASCII digits: the part of int()'s syntax an answer may use. int() alone
# would also take "1_000" and non-ASCII digits such as "١٧"; those are rejected, as are
# "17.0", "1,000", "1e3" and words.
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _parse_integer(text: str) -> int | None:
    text = text.strip()
    if not _INTEGER.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        return None


def integer_reward(completion: str, example: Example) -> Score:
    """1.0 iff the text in <answer> is an integer equal to int(example.answer), else 0.0.

    Accepted: surrounding whitespace, a leading "+" or "-", leading zeros ("017" is 17; int()
    reads it so, and a sum is still right with them). Rejected (0.0): "17.0", "1,000", "1_000",
    "1e3", "seventeen", and a completion without an <answer>...</answer> pair. The gold answer
    must itself be such an integer; otherwise this raises ValueError naming the example, since
    that is a bug in the task, not a wrong completion.

    >>> example = Example(id="sums-1", prompt="What is 9 + 8?", answer="17")
    >>> integer_reward("<think> 9 + 8 = 17 </think> <answer> 17 </answer>", example)
    Score(1.0, 'correct')
    >>> integer_reward("<think> 9 + 8 = 17 </think> <answer> 17.0 </answer>", example)
    Score(0.0, 'answer is not an integer', 'parse_failure')
    """
    gold = _parse_integer(example.answer)
    if gold is None:
        raise ValueError(
            f"example {example.id!r}: the integer reward needs an integer gold answer (like \"17\" or \"-3\"), "
            f"got {example.answer!r}; use the math reward for other answers"
        )
    answer = extract_answer(completion)
    if answer is None:
        return Score(0.0, "no answer tag", PARSE_FAILURE)
    value = _parse_integer(answer)
    if value is None:
        return Score(0.0, "answer is not an integer", PARSE_FAILURE)
    return Score(1.0, "correct") if value == gold else Score(0.0, "wrong answer")
