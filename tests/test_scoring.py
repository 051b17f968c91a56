"""`r1zero score`: offline scoring of completions, one JSON line per row in input order, with reasons."""

import json

import pytest

from r1zero.cli import main
from r1zero.scoring import health_summary, parse_reward_weights

ADD_TESTS = [{"input": "2 3\n", "output": "5"}, {"input": "1 1\n", "output": "2"}]
ROWS = [
    {"completion": "<think> half </think> <answer> \\boxed{\\frac{1}{2}} </answer>", "answer": "0.5"},
    {"completion": "<think> x </think> <answer> 0.4 </answer>", "answer": "0.5"},
    {"completion": "the answer is 0.5", "answer": "0.5"},
    {"completion": "<answer> " + "\\frac{" * 3000 + "1" + "}{2}" * 3000 + " </answer>", "answer": "0.5"},
]


def write_rows(tmp_path, rows, name="completions.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_score_math_and_format_with_reasons(tmp_path, capsys):
    path = write_rows(tmp_path, ROWS)
    output = tmp_path / "scored.jsonl"
    assert main(["score", "--reward", "math,format=0.5", "--input", str(path), "--output", str(output),
                 "--timeout", "2", "--workers", "2"]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["row"] for r in records] == [1, 2, 3, 4]  # input order
    # score = 1.0 * math + 0.5 * format
    assert [r["score"] for r in records] == [1.5, 0.5, 0.0, 0.0]
    assert [r["rewards"]["math"]["reason"] for r in records] == ["correct", "wrong answer", "no answer tag",
                                                                  "timeout"]
    assert [r["rewards"]["format"]["reason"] for r in records] == ["well formed", "well formed",
                                                                    "does not start with <think>",
                                                                    "does not start with <think>"]
    summary = capsys.readouterr().err
    assert f"scored 4 rows into {output}; math: 1 timeouts, 1 parse_failures; format: no failures" in summary


def test_score_code_and_countdown_to_stdout(tmp_path, capsys):
    rows = [
        {"completion": "<answer>\n```python\na, b = map(int, input().split())\nprint(a + b)\n```\n</answer>",
         "tests": ADD_TESTS},
        {"completion": "<answer>print(5)</answer>", "tests": ADD_TESTS},  # passes the first test only
        {"completion": "<answer>while True: pass</answer>", "tests": ADD_TESTS},
    ]
    path = write_rows(tmp_path, rows)
    assert main(["score", "--reward", "code", "--input", str(path), "--code-test-timeout", "0.5",
                 "--timeout", "3"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["score"] for r in records] == [1.0, 0.5, 0.0]
    assert [r["rewards"]["code"]["reason"] for r in records] == [
        "tests passed 2/2", "tests failed 1/2 (test 2: wrong output)", "tests failed 2/2 (test 1: timeout)"]
    countdown = write_rows(tmp_path, [{"completion": "<answer> (6 - 2) * 6 </answer>", "numbers": [2, 6, 6],
                                       "target": 24}], "countdown.jsonl")
    assert main(["score", "--reward", "countdown", "--input", str(countdown)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == {"row": 1, "score": 1.0, "rewards": {"countdown": {"score": 1.0, "reason": "correct"}}}


@pytest.mark.parametrize(
    "rows, reward, message",
    [
        ([{"answer": "1"}], "math", "completions.jsonl:1: field 'completion' is missing"),
        ([{"completion": "x", "answer": "1"}, {"completion": "y"}], "math",
         "completions.jsonl:2: field 'answer' is missing or empty (needed by the math reward)"),
        ([{"completion": "x", "numbers": [1, 2]}], "countdown", "completions.jsonl:1: field 'target' is None"),
        ([{"completion": "x"}], "code", "completions.jsonl:1: no tests"),
        ([{"completion": "x", "answer": "1"}], "accuracy", "'accuracy' means a task's checker"),
        ([{"completion": "x", "answer": "1"}], "math=heavy", "the weight of 'math' is 'heavy'"),
        ([{"completion": "x", "answer": "1"}], "maths", "unknown reward component 'maths'"),
    ],
)
def test_score_errors_name_the_row_and_field(tmp_path, capsys, rows, reward, message):
    path = write_rows(tmp_path, rows)
    assert main(["score", "--reward", reward, "--input", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_parse_reward_weights_and_summary():
    assert parse_reward_weights("math, format=0.5 ,my.py:f=-1") == {"math": 1.0, "format": 0.5, "my.py:f": -1.0}
    assert health_summary({"reward_health/rules/my.py:f/timeouts": 2, "reward_health/rules/my.py:f/exceptions": 0}) \
        == "rules/my.py:f: 2 timeouts"
