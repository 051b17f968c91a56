"""The Countdown checker: does the answer's arithmetic expression reach the target using each number once?

The task of TinyZero (Pan et al. 2025, github.com/Jiayi-Pan/TinyZero, verl/utils/reward_score/countdown.py): given
numbers such as [19, 36, 55, 7] and a target such as 65, write an equation with + - * / and parentheses that uses
each number exactly once, e.g. <answer> 55 + 36 - 7 - 19 </answer>. Two departures from TinyZero's checker, both
on purpose: the expression is parsed with `ast` against a whitelist (TinyZero filters characters with a regex,
then calls eval), and it is evaluated exactly with fractions.Fraction (TinyZero compares floats within 1e-5),
so (1 / 3) * 3 is exactly 1. TinyZero's 0.1 "format score" for a wrong equation is not part of this reward;
weight the separate format reward for that.
"""

from __future__ import annotations

import ast
from collections import Counter
from fractions import Fraction

from r1zero.example import Example
from r1zero.rewards.format import extract_answer
from r1zero.rewards.score import PARSE_FAILURE, Score

MAX_EXPRESSION_CHARS = 1000  # longer answers are not parsed (no Countdown equation is this long)
_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class CountdownError(ValueError):
    """An answer that is not a valid Countdown expression; the message says why."""


def parse_expression(text: str) -> ast.expr:
    """The expression's syntax tree, allowing only non-negative integer literals, + - * / and parentheses.

    Parsing is `ast.parse(..., mode="eval")`: the text is never executed. Raises CountdownError otherwise.

    >>> ast.dump(parse_expression("(1 + 2) / 3"))[:5]
    'BinOp'
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CountdownError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise CountdownError(f"not an arithmetic expression ({type(error).__name__})") from None
    for node in ast.walk(tree.body):
        if isinstance(node, ast.BinOp):
            if type(node.op) in _OPERATORS:
                continue
            node = node.op  # name the operator: "Pow is not allowed"
        elif isinstance(node, tuple(_OPERATORS)):
            continue
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            continue
        raise CountdownError(f"{type(node).__name__} is not allowed; use numbers, + - * / and parentheses")
    return tree.body


def numbers_used(tree: ast.expr) -> list[int]:
    """The integer literals of the expression, in reading order."""
    constants = [node for node in ast.walk(tree) if isinstance(node, ast.Constant)]
    return [node.value for node in sorted(constants, key=lambda node: (node.lineno, node.col_offset))]


def evaluate_expression(tree: ast.expr) -> Fraction:
    """The exact value of a whitelisted expression; ZeroDivisionError on a division by zero.

    >>> evaluate_expression(parse_expression("(1 / 3) * 3"))
    Fraction(1, 1)
    """
    if isinstance(tree, ast.Constant):
        return Fraction(tree.value)
    left, right = evaluate_expression(tree.left), evaluate_expression(tree.right)
    if isinstance(tree.op, ast.Add):
        return left + right
    if isinstance(tree.op, ast.Sub):
        return left - right
    if isinstance(tree.op, ast.Mult):
        return left * right
    return left / right  # Fraction raises ZeroDivisionError


def check_countdown_example(example: Example) -> str | None:
    """What is wrong with the example's metadata for the countdown reward, or None: it needs "numbers", a
    non-empty list of non-negative integers, and "target", an integer."""
    numbers, target = example.metadata.get("numbers"), example.metadata.get("target")
    if not (isinstance(numbers, list) and numbers
            and all(type(n) is int and n >= 0 for n in numbers)):
        return (f"field 'numbers' is {numbers!r:.60}; give a non-empty list of non-negative integers, e.g. "
                f"[19, 36, 55, 7]")
    if type(target) is not int:
        return f"field 'target' is {target!r:.60}; give an integer, e.g. 65"
    return None


def countdown_reward(completion: str, example: Example) -> Score:
    """1.0 iff the answer is an expression over example.metadata["numbers"], each used exactly once, with only
    + - * / and parentheses, whose exact value is example.metadata["target"]; else 0.0 with the reason.

    >>> example = Example(id="countdown-1", prompt="", answer="", metadata={"numbers": [19, 36, 55, 7], "target": 65})
    >>> countdown_reward("<think> 55 + 36 = 91 </think> <answer> 55 + 36 - 7 - 19 </answer>", example)
    Score(1.0, 'correct')
    >>> countdown_reward("<answer> 55 + 19 - 7 </answer>", example).reason
    'uses [55, 19, 7]; each of [7, 19, 36, 55] must be used exactly once'
    """
    problem = check_countdown_example(example)
    if problem is not None:
        raise ValueError(f"example {example.id!r}: {problem}")
    numbers, target = example.metadata["numbers"], example.metadata["target"]
    answer = extract_answer(completion)
    if answer is None:
        return Score(0.0, "no answer tag", PARSE_FAILURE)
    try:
        tree = parse_expression(answer)
    except CountdownError as error:
        return Score(0.0, str(error), PARSE_FAILURE)
    used = numbers_used(tree)
    if Counter(used) != Counter(numbers):
        return Score(0.0, f"uses {used}; each of {sorted(numbers)} must be used exactly once")
    try:
        value = evaluate_expression(tree)
    except ZeroDivisionError:
        return Score(0.0, "division by zero")
    if value != target:
        return Score(0.0, f"equals {value}, not {target}")
    return Score(1.0, "correct")
