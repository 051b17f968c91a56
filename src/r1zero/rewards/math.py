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
from r1zero.rewards.score import EXCEPTION, PARSE_FAILURE, TIMEOUT, Score

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


def math_reward(completion: str, example: Example) -> Score:
    """1.0 iff the answer in <answer> is mathematically equal to example.answer, else 0.0 (with the reason).

    The answer is the text in the first <answer>...</answer> pair, or, if it holds a \\boxed{},
    the content of its last \\boxed{}. Both it and the gold answer are parsed by math_verify
    (plain numbers, LaTeX, $...$) and compared with math_verify.verify, so "0.5", "1/2" and
    "\\frac{1}{2}" are all equal. No answer pair, a failed parse or any exception gives 0.0.

    Pathological answers (9^9^9^9, deeply nested LaTeX, megabytes of text) can make math_verify run for minutes
    in C code that no signal interrupts; RewardScorer therefore runs this reward in its scoring pool, whose
    worker processes are killed at a hard per-sample limit (`needs_isolation` below). Its own SIGALRM timeouts
    work only on a main thread, and are a second layer there.

    >>> example = Example(id="math-1", prompt="Half of 1?", answer="\\\\frac{1}{2}")
    >>> math_reward("<think> 1 / 2 </think> <answer> 0.5 </answer>", example)
    Score(1.0, 'correct')
    >>> math_reward("<think> 1 / 3 </think> <answer> \\\\boxed{1/3} </answer>", example)
    Score(0.0, 'wrong answer')
    """
    answer = extract_answer(completion)
    if answer is None:
        return Score(0.0, "no answer tag", PARSE_FAILURE)
    answer = last_boxed_content(answer) or answer
    on_main_thread = threading.current_thread() is threading.main_thread()
    timeout_seconds = _TIMEOUT_SECONDS if on_main_thread else None
    try:
        gold_parsed = _parse_math(example.answer, timeout_seconds)
        if not gold_parsed:
            return Score(0.0, f"reference answer {example.answer!r:.60} cannot be parsed", PARSE_FAILURE)
        answer_parsed = _parse_math(answer, timeout_seconds)
        if not answer_parsed:
            return Score(0.0, "answer cannot be parsed", PARSE_FAILURE)
        if verify(gold_parsed, answer_parsed, timeout_seconds=timeout_seconds):
            return Score(1.0, "correct")
        return Score(0.0, "wrong answer")
    except TimeoutException:  # a BaseException
        return Score(0.0, "timeout (math_verify's own limit)", TIMEOUT)
    except Exception as error:
        return Score(0.0, f"math_verify raised {type(error).__name__}", EXCEPTION)


math_reward.needs_isolation = True  # run by the scoring pool, in worker processes killed at a hard time limit
