"""The format reward of DeepSeek-R1-Zero, and reading the answer out of a completion.

"Format rewards: in addition to the accuracy reward model, we employ a format reward model that
enforces the model to put its thinking process between '<think>' and '</think>' tags."
(DeepSeek-R1 paper, section 2.2.2; the answer goes in <answer> </answer>, Table 1.)
"""

from __future__ import annotations

from r1zero.example import Example
from r1zero.rewards.score import Score

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def extract_answer(completion: str) -> str | None:
    """The stripped text between the first "<answer>" and the first "</answer>" after it; None if
    there is no such pair. Same result as re.search(r"<answer>(.*?)</answer>", completion, re.S),
    in linear time. Lenient on purpose: whether the layout is right is format_reward's job.

    >>> extract_answer("<think> 3 + 5 = 8 </think> <answer> 8 </answer>")
    '8'
    >>> extract_answer("<think> no answer yet") is None
    True
    """
    start = completion.find(ANSWER_OPEN)
    if start < 0:
        return None
    start += len(ANSWER_OPEN)
    end = completion.find(ANSWER_CLOSE, start)
    if end < 0:
        return None
    return completion[start:end].strip()


def format_reward(completion: str, example: Example) -> Score:
    """1.0 iff the completion is exactly one think block followed by one answer block, else 0.0 (with the reason).

    Strictly: after stripping surrounding whitespace, the completion must be
        <think>X</think>  optional whitespace  <answer>Y</answer>
    with nothing before <think> or after </answer>, where X and Y are non-empty after stripping
    and contain none of the four tags <think> </think> <answer> </answer> (so no nesting and no
    second think or answer block). Tags are these exact, case-sensitive strings: "< think >" or
    "<THINK>" is ordinary text, not a tag. Whitespace inside the blocks is free, because tokens
    are often decoded with spaces around them. The example is not used.

    >>> example = Example(id="sums-1", prompt="What is 3 + 5?", answer="8")
    >>> format_reward("<think> 3 + 5 = 8 </think> <answer> 8 </answer>", example)
    Score(1.0, 'well formed')
    >>> format_reward("<answer> 8 </answer>", example)
    Score(0.0, 'does not start with <think>')
    """
    text = completion.strip()
    if not text.startswith(THINK_OPEN):
        return Score(0.0, "does not start with <think>")
    think_end = text.find(THINK_CLOSE)
    if think_end < 0:
        return Score(0.0, "no </think>")
    thought = text[len(THINK_OPEN) : think_end]
    rest = text[think_end + len(THINK_CLOSE) :].lstrip()
    if not rest.startswith(ANSWER_OPEN):
        return Score(0.0, "no <answer> right after </think>")
    if len(rest) < len(ANSWER_OPEN) + len(ANSWER_CLOSE) or not rest.endswith(ANSWER_CLOSE):
        return Score(0.0, "does not end with </answer>")
    answer = rest[len(ANSWER_OPEN) : -len(ANSWER_CLOSE)]
    for name, block in (("think", thought), ("answer", answer)):
        if not block.strip():
            return Score(0.0, f"empty {name} block")
        if any(tag in block for tag in TAGS):
            return Score(0.0, f"a tag inside the {name} block")
    return Score(1.0, "well formed")
