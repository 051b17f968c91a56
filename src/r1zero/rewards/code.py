"""The code reward: run the Python program in the answer against the example's tests, in the sandbox.

    example.metadata = {"tests": [{"input": "2 3\\n", "output": "5"}],          # stdin -> expected stdout
                        "asserts": ["assert add(2, 3) == 5"]}                   # statements run after the code
    code_reward("<think> ... </think> <answer> ```python\\n...\\n``` </answer>", example)   # share of tests passed

Each test is one sandboxed run (r1zero.rewards.sandbox) of the extracted program:
  - an input/output test feeds `input` on stdin and passes when the program exits with status 0 and its stdout
    equals `output` after removing trailing whitespace from every line and trailing blank lines;
  - an assert test runs the program followed by the statement, then prints a random token; it passes when the
    program exits with status 0 and the token is the last line of stdout (so `exit(0)` before the assert fails).
    A program that reads its own source file could still print the token; nothing in-process can prevent that.
"""

from __future__ import annotations

import secrets
import time

from r1zero.example import Example
from r1zero.rewards.format import extract_answer
from r1zero.rewards.sandbox import SandboxLimits, SandboxResult, run_python
from r1zero.rewards.score import PARSE_FAILURE, TIMEOUT, Score

MAX_CODE_CHARS = 100_000  # longer answers are not run
_PYTHON_TAGS = ("python", "py", "python3", "")


def extract_code(completion: str) -> str | None:
    """The Python program in the answer: the last ```python (or ```py, ```python3, bare ```) fenced block inside
    <answer>, else the whole answer text. None without an <answer>...</answer> pair.

    >>> extract_code("<answer> ```python\\nprint(1)\\n``` </answer>")
    'print(1)\\n'
    >>> extract_code("<answer> print(1) </answer>")
    'print(1)'
    """
    answer = extract_answer(completion)
    if answer is None:
        return None
    pieces = answer.split("```")
    for block in reversed(pieces[1:-1:2]):  # the text between the 1st and 2nd fence, 3rd and 4th, ...
        tag, newline, body = block.partition("\n")
        if newline and tag.strip().lower() in _PYTHON_TAGS:
            return body
    return answer


def check_code_example(example: Example) -> str | None:
    """What is wrong with the example's tests for the code reward (naming the field), or None if they are usable.

    Valid: metadata "tests", a list of {"input": str, "output": str} objects, and/or "asserts", a list of
    non-empty strings; at least one test in all.
    """
    tests = example.metadata.get("tests", [])
    asserts = example.metadata.get("asserts", [])
    if not isinstance(tests, list):
        return f"field 'tests' is a {type(tests).__name__}; give a list of {{\"input\": ..., \"output\": ...}} objects"
    for index, test in enumerate(tests):
        if not (isinstance(test, dict) and isinstance(test.get("input"), str) and isinstance(test.get("output"), str)):
            return (f"field 'tests', item {index + 1}: {test!r:.80} is not an object with string \"input\" and "
                    f"\"output\"")
    if not isinstance(asserts, list) or not all(isinstance(a, str) and a.strip() for a in asserts):
        return "field 'asserts': give a list of non-empty strings such as \"assert f(2) == 4\""
    if not tests and not asserts:
        return "no tests: give field 'tests' (stdin/stdout pairs) and/or 'asserts' (Python assert statements)"
    return None


def normalise_output(text: str) -> str:
    """Output as compared: trailing whitespace removed from each line, trailing blank lines dropped.

    >>> normalise_output("5  \\n\\n")
    '5'
    """
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def code_reward(completion: str, example: Example, partial_credit: bool = True, test_timeout_seconds: float = 2.0,
                budget_seconds: float | None = None, limits: SandboxLimits = SandboxLimits()) -> Score:
    """The share of the example's tests the answer's program passes (partial_credit), or 1.0 only when all pass.

    test_timeout_seconds is each run's wall-clock limit. budget_seconds bounds the whole call: once spent, the
    remaining tests fail without running (reason "timeout"), so a scoring pool with a hard per-sample limit never
    has to kill this call mid-run. Raises ValueError when the example has no usable tests (a data error).

    >>> example = Example(id="c-1", prompt="Print the sum of two integers.", answer="",
    ...                   metadata={"tests": [{"input": "2 3", "output": "5"}]})
    >>> code_reward("<answer> print(sum(map(int, input().split()))) </answer>", example)  # doctest: +SKIP
    Score(1.0, 'tests passed 1/1')
    """
    problem = check_code_example(example)
    if problem is not None:
        raise ValueError(f"example {example.id!r}: {problem}")
    code = extract_code(completion)
    if code is None:
        return Score(0.0, "no answer tag", PARSE_FAILURE)
    if not code.strip():
        return Score(0.0, "no code in the answer", PARSE_FAILURE)
    if len(code) > MAX_CODE_CHARS:
        return Score(0.0, f"code longer than {MAX_CODE_CHARS} characters", PARSE_FAILURE)
    try:
        compile(code, "main.py", "exec")
    except SyntaxError as error:
        where = f"line {error.lineno}: " if error.lineno else ""
        return Score(0.0, f"syntax error: {where}{error.msg}", PARSE_FAILURE)
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, nesting too deep
        return Score(0.0, f"cannot compile: {type(error).__name__}", PARSE_FAILURE)

    runs = [(code, test["input"], test["output"], False) for test in example.metadata.get("tests", [])]
    for statement in example.metadata.get("asserts", []):
        token = f"r1zero-assert-passed-{secrets.token_hex(16)}"
        runs.append((f"{code}\n\n{statement}\nprint({token!r})\n", "", token, True))
    started = time.monotonic()
    verdicts = []
    for program, stdin, expected, is_assert in runs:
        remaining = test_timeout_seconds if budget_seconds is None else budget_seconds - (time.monotonic() - started)
        if remaining < 0.05:
            verdicts.append("timeout (time budget spent)")
            continue
        wall = min(test_timeout_seconds, remaining)
        result = run_python(program, stdin, SandboxLimits(**{**limits.__dict__, "wall_seconds": wall}))
        verdicts.append(_verdict(result, expected, is_assert))
    passed = verdicts.count("passed")
    total = len(verdicts)
    value = passed / total if partial_credit else float(passed == total)
    if passed == total:
        return Score(value, f"tests passed {passed}/{total}")
    first = next(i for i, verdict in enumerate(verdicts) if verdict != "passed")
    timed_out = any(verdict.startswith("timeout") for verdict in verdicts)
    return Score(value, f"tests failed {total - passed}/{total} (test {first + 1}: {verdicts[first]})",
                 TIMEOUT if timed_out else None)


def _verdict(result: SandboxResult, expected: str, is_assert: bool) -> str:
    """"passed", or why not: timeout, output limit, exit status with the error's last line, wrong output. For an
    assert test, `expected` is the token that must be the last line of stdout."""
    if result.timed_out:
        return "timeout"
    if result.output_exceeded:
        return "output over the limit"
    if result.returncode != 0:
        last_line = result.stderr.strip().splitlines()[-1:] or [""]
        return f"exit status {result.returncode}" + (f": {last_line[0][:80]}" if last_line[0] else "")
    output = normalise_output(result.stdout)
    if is_assert:
        if output.rpartition("\n")[2] != expected:
            return "stopped before the assert ran"
    elif output != normalise_output(expected):
        return "wrong output"
    return "passed"


code_reward.needs_isolation = True  # run by the scoring pool: sandbox runs in parallel, a hard limit per sample
