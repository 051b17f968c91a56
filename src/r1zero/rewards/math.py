"""Math answer checking with math_verify (symbolic equivalence, not string equality).

"Accuracy rewards: ... in the case of math problems with deterministic results, the model is
required to provide the final answer in a specified format, enabling reliable rule-based
verification of correctness." (DeepSeek-R1 paper, section 2.2.2.)
"""

from __future__ import annotations

import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from r1zero.example import Example
from r1zero.rewards.format import extract_answer

# LaTeX first (\frac{1}{2}, x^2, \sqrt{2}, also plain numbers), then plain expressions (1,000;
# $5) for what LaTeX parsing misses. A \boxed{} is read first wherever it is.
_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_MATH_DELIMITERS = ("$", "\\(", "\\[")
# math_verify's own time limits (per parse and per comparison) use signal.alarm, which only works
# on the main thread; on other threads math_reward runs without them.
_TIMEOUT_SECONDS = 5


def last_boxed_content(text: str) -> str | None:
    """The text inside the last \\boxed{...} of text, braces balanced; None if there is none.

    >>> last_boxed_content("so x = \\\\boxed{\\\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    start += len("\\boxed{")
    depth = 1
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[start:position]
    return None  # unclosed \boxed{


def _parse_math(text: str, timeout_seconds: int | None) -> list:
    """math_verify's parse of one answer. A plain answer ("0.5", "\\frac{1}{2}", "x^2") is
    wrapped in $...$ so the LaTeX extractor reads it whole; text with its own math delimiters is
    left as is. Newlines are joined with spaces because inline math is one line."""
    text = " ".join(text.split())
    if not any(delimiter in text for delimiter in _MATH_DELIMITERS):
        text = f"${text}$"
    return parse(text, extraction_config=_EXTRACTION, parsing_timeout=timeout_seconds)


def math_reward(completion: str, example: Example) -> float:
    """1.0 iff the answer in <answer> is mathematically equal to example.answer, else 0.0.

    The answer is the text in the first <answer>...</answer> pair, or, if it holds a \\boxed{},
    the content of its last \\boxed{}. Both it and the gold answer are parsed by math_verify
    (plain numbers, LaTeX, $...$) and compared with math_verify.verify, so "0.5", "1/2" and
    "\\frac{1}{2}" are all equal. No answer pair, a failed parse or any exception gives 0.0.

    >>> example = Example(id="math-1", prompt="Half of 1?", answer="\\\\frac{1}{2}")
    >>> math_reward("<think> 1 / 2 </think> <answer> 0.5 </answer>", example)
    1.0
    >>> math_reward("<think> 1 / 3 </think> <answer> \\\\boxed{1/3} </answer>", example)
    0.0
    """
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    answer = last_boxed_content(answer) or answer
    # Runs on the calling thread; worker-process timeouts come in a later issue.
    on_main_thread = threading.current_thread() is threading.main_thread()
    timeout_seconds = _TIMEOUT_SECONDS if on_main_thread else None
    try:
        gold_parsed = _parse_math(example.answer, timeout_seconds)
        answer_parsed = _parse_math(answer, timeout_seconds)
        if not gold_parsed or not answer_parsed:
            return 0.0
        return 1.0 if verify(gold_parsed, answer_parsed, timeout_seconds=timeout_seconds) else 0.0
    except (Exception, TimeoutException):  # TimeoutException is a BaseException
        return 0.0
