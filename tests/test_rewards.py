"""Tests of r1zero.rewards: each reward on a table of completions, adversarial ones included."""

import threading

import pytest

from r1zero.example import Example
from r1zero.rewards.score import PARSE_FAILURE, TIMEOUT, as_score
from r1zero.rewards import (
    REWARD_FUNCTIONS,
    RewardError,
    Score,
    code_reward,
    countdown_reward,
    RewardBatch,
    RewardScorer,
    extract_answer,
    format_reward,
    get_reward_function,
    integer_reward,
    math_reward,
)

SUMS = Example(id="sums-1", prompt="What is 9 + 8?", answer="17")
HUGE_THOUGHT = "3 + 5 = 8 . " * 200_000  # about 2.4 MB

# ----------------------------------------------------------------------------
# extract_answer

@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think> 9 + 8 = 17 </think> <answer> 17 </answer>", "17"),
        ("<answer>\n17\n</answer>", "17"),
        ("<answer>1</answer> <answer>2</answer>", "1"),  # the first pair
        ("<answer><answer>5</answer></answer>", "<answer>5"),  # first <answer> to first </answer>
        ("<answer></answer>", ""),
        ("<answer> 17", None),  # unclosed
        ("</answer> 17 <answer>", None),  # closing tag before the opening one
        ("the answer is 17", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


# ----------------------------------------------------------------------------
# format_reward: the strict definition in its docstring

FORMAT_CASES = [
    # --- well formed
    ("<think>3 + 5 = 8</think><answer>8</answer>", 1.0),
    ("<think> 3 + 5 = 8 </think> <answer> 8 </answer>", 1.0),  # tokens decoded with spaces around them
    ("\n  <think>\n3 + 5 = 8\n</think>\n\n<answer>\n8\n</answer>\n  ", 1.0),  # surrounding whitespace
    ("<think> a < b and b > c </think> <answer> a < c </answer>", 1.0),  # < and > alone are not tags
    ("<think> x < think > y </think> <answer> 8 </answer>", 1.0),  # "< think >" is text, not a tag
    pytest.param(f"<think>{HUGE_THOUGHT}</think> <answer> 8 </answer>", 1.0, id="huge-think"),  # long is fine
    # --- missing or misplaced blocks
    ("<answer> 8 </answer>", 0.0),  # missing think
    ("<think> 3 + 5 = 8 </think>", 0.0),  # missing answer
    ("<answer> 8 </answer> <think> 3 + 5 = 8 </think>", 0.0),  # answer before think
    ("3 + 5 = 8", 0.0),  # no tags at all
    ("", 0.0),
    # --- extra blocks, nesting, text outside
    ("<think> a </think> <answer> 8 </answer> <answer> 9 </answer>", 0.0),  # two answer blocks
    ("<think> a </think> <think> b </think> <answer> 8 </answer>", 0.0),  # two think blocks
    ("<think> a <think> b </think> </think> <answer> 8 </answer>", 0.0),  # nested think
    ("<think> a </think> <answer> <answer> 8 </answer> </answer>", 0.0),  # nested answer
    ("<think> a <answer> 7 </answer> </think> <answer> 8 </answer>", 0.0),  # answer inside think
    ("<think> a </think> <answer> 8 </answer> and that is all", 0.0),  # text after </answer>
    ("Sure! <think> a </think> <answer> 8 </answer>", 0.0),  # text before <think>
    ("<think> a </think> so <answer> 8 </answer>", 0.0),  # text between the blocks
    # --- empty blocks
    ("<think></think> <answer> 8 </answer>", 0.0),  # empty think
    ("<think> \n </think> <answer> 8 </answer>", 0.0),  # think of whitespace only
    ("<think> a </think> <answer></answer>", 0.0),  # empty answer
    ("<think> a </think> <answer>   </answer>", 0.0),  # answer of whitespace only
    # --- unclosed or malformed tags
    ("<think> a <answer> 8 </answer>", 0.0),  # unclosed think
    ("<think> a </think> <answer> 8", 0.0),  # unclosed answer
    ("<think> a </think> <answer> 8 <answer>", 0.0),  # answer "closed" by an opening tag
    ("< think > a </ think > < answer > 8 </ answer >", 0.0),  # spaces inside the tags
    ("<THINK> a </THINK> <ANSWER> 8 </ANSWER>", 0.0),  # tags are case-sensitive
    ("<think> a </think> <answer> 8 </answer", 0.0),  # truncated closing tag
    # --- the template's own placeholders, copied back
    ("<think> reasoning process here </think> <answer> answer here </answer>" * 2, 0.0),
    ("<think> </think> and <answer> </answer>", 0.0),
    # --- huge adversarial strings
    pytest.param("<think>" * 100_000 + " a </think> <answer> 8 </answer>", 0.0, id="100k-think-tags"),
    pytest.param("<think> a </think>" + " <answer> 8 </answer>" * 100_000, 0.0, id="100k-answer-blocks"),
]


@pytest.mark.parametrize("completion, expected", FORMAT_CASES)
def test_format_reward(completion, expected):
    assert format_reward(completion, SUMS) == expected


# ----------------------------------------------------------------------------
# integer_reward: exact match against int(example.answer) == 17

INTEGER_CASES = [
    ("<answer>17</answer>", 1.0),
    ("<think> 9 + 8 = 17 </think> <answer> 17 </answer>", 1.0),  # surrounding whitespace
    ("<answer>\n17\n</answer>", 1.0),
    ("<answer>017</answer>", 1.0),  # leading zeros: int("017") == 17
    ("<answer>+17</answer>", 1.0),  # explicit sign
    ("<answer>17</answer> <answer>18</answer>", 1.0),  # the first answer is read (format_reward gives 0)
    ("<answer>18</answer>", 0.0),  # wrong
    ("<answer>-17</answer>", 0.0),  # wrong sign
    ("<answer>17.0</answer>", 0.0),  # not an integer literal
    ("<answer>17.5</answer>", 0.0),
    ("<answer>1_7</answer>", 0.0),  # int() would accept it; the reward does not
    ("<answer>١٧</answer>", 0.0),  # Arabic-Indic digits: int() would give 17; not ASCII
    ("<answer>1e1</answer>", 0.0),
    ("<answer>seventeen</answer>", 0.0),
    ("<answer>17 apples</answer>", 0.0),
    ("<answer>- 17</answer>", 0.0),  # a space between sign and digits
    ("<answer></answer>", 0.0),
    ("<answer> 17", 0.0),  # unclosed
    ("17", 0.0),  # no answer tag
    pytest.param("<answer>" + "1" * 10_000 + "</answer>", 0.0, id="10k-digits"),  # more digits than int() reads
]


@pytest.mark.parametrize("completion, expected", INTEGER_CASES)
def test_integer_reward(completion, expected):
    assert integer_reward(completion, SUMS) == expected


@pytest.mark.parametrize(
    "gold, completion, expected",
    [
        ("-3", "<answer>-3</answer>", 1.0),
        ("-3", "<answer>3</answer>", 0.0),
        ("0", "<answer>-0</answer>", 1.0),  # -0 == 0
        (" 8 ", "<answer>8</answer>", 1.0),  # the gold is stripped too
    ],
)
def test_integer_reward_other_golds(gold, completion, expected):
    example = Example(id="sums-2", prompt="?", answer=gold)
    assert integer_reward(completion, example) == expected


def test_integer_reward_rejects_a_non_integer_gold():
    example = Example(id="sums-bad", prompt="?", answer="17.5")
    with pytest.raises(ValueError, match=r"sums-bad.*'17\.5'.*math reward"):
        integer_reward("<answer>17</answer>", example)


# ----------------------------------------------------------------------------
# math_reward: equivalence through math_verify

MATH_CASES = [
    # gold, completion, expected
    ("0.5", "<answer>\\frac{1}{2}</answer>", 1.0),
    ("\\frac{1}{2}", "<answer>0.5</answer>", 1.0),
    ("\\frac{1}{2}", "<answer>1/2</answer>", 1.0),
    ("\\frac{1}{2}", "<answer>$\\frac{1}{2}$</answer>", 1.0),
    ("2", "<answer>\\boxed{2}</answer>", 1.0),
    ("2", "<answer>so the result is \\boxed{2}.</answer>", 1.0),  # the boxed part is read
    ("\\frac{1}{2}", "<answer>\\boxed{\\frac{1}{2}}</answer>", 1.0),  # nested braces
    ("2", "<answer>\\boxed{1} then \\boxed{2}</answer>", 1.0),  # the last \boxed{}
    ("x^2", "<answer>$x^2$</answer>", 1.0),
    ("$x^2$", "<answer>x^2</answer>", 1.0),  # the gold may carry $...$ too
    ("x + 1", "<answer>1 + x</answer>", 1.0),
    ("\\sqrt{2}", "<answer>2^{1/2}</answer>", 1.0),
    ("17", "<think> 9 + 8 = 17 </think> <answer> 17 </answer>", 1.0),
    ("-3", "<answer>-3</answer>", 1.0),
    ("1000", "<answer>1,000</answer>", 1.0),
    # --- wrong answers
    ("\\frac{1}{2}", "<answer>\\frac{1}{3}</answer>", 0.0),
    ("\\frac{1}{2}", "<answer>\\boxed{1/3}</answer>", 0.0),
    ("2", "<answer>\\boxed{2} then \\boxed{3}</answer>", 0.0),  # the last \boxed{} is 3
    ("x^2", "<answer>x^3</answer>", 0.0),
    ("17", "<answer>-17</answer>", 0.0),
    ("17", "<answer>seventeen</answer>", 0.0),
    ("2", "<answer>2x</answer>", 0.0),
    # --- garbage, no answer
    ("2", "<answer>}{</answer>", 0.0),
    ("2", "<answer>$$$</answer>", 0.0),
    ("2", "<answer>\\boxed{2</answer>", 0.0),  # unclosed \boxed{
    ("2", "<answer></answer>", 0.0),
    ("2", "<answer>\\frac{</answer>", 0.0),
    ("2", "the answer is 2", 0.0),  # no answer tag
    ("2", "<think> 2 </think> <answer> 2", 0.0),  # unclosed answer tag
]


@pytest.mark.parametrize("gold, completion, expected", MATH_CASES)
def test_math_reward(gold, completion, expected):
    example = Example(id="math-1", prompt="?", answer=gold)
    assert math_reward(completion, example) == expected


def test_math_reward_off_the_main_thread():
    # math_verify's timeouts use signal.alarm, which raises off the main thread; the reward must
    # still score there (without the timeouts) instead of silently returning 0.0.
    example = Example(id="math-1", prompt="?", answer="\\frac{1}{2}")
    scores = []
    thread = threading.Thread(target=lambda: scores.append(math_reward("<answer>0.5</answer>", example)))
    thread.start()
    thread.join()
    assert scores == [1.0]


# ----------------------------------------------------------------------------
# registry and scorer


def test_registry():
    assert REWARD_FUNCTIONS == {"format": format_reward, "integer": integer_reward, "math": math_reward,
                                "countdown": countdown_reward, "code": code_reward}
    assert get_reward_function("math") is math_reward


def test_get_reward_function_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown reward function 'exact'; valid names: format, integer, math, "
                                         "countdown, code"):
        get_reward_function("exact")


def test_scorer_weighted_totals():
    scorer = RewardScorer({"accuracy": 1.0, "format": 0.5}, accuracy_function="integer")
    completions = [
        "<think> 9 + 8 = 17 </think> <answer> 17 </answer>",  # right, well formed
        "<answer> 17 </answer>",  # right, no think block
        "<think> 9 + 8 = 16 </think> <answer> 16 </answer>",  # wrong, well formed
        "seventeen",  # wrong, no tags
    ]
    batch = scorer(completions, [SUMS] * 4)
    assert isinstance(batch, RewardBatch)
    assert batch.components == {"accuracy": [1.0, 1.0, 0.0, 0.0], "format": [1.0, 0.0, 1.0, 0.0]}
    # total = 1.0 * accuracy + 0.5 * format
    assert batch.total == [1.5, 1.0, 0.5, 0.0]


def test_scorer_accuracy_resolves_to_the_tasks_checker():
    half = Example(id="math-1", prompt="?", answer="\\frac{1}{2}")
    completion = "<think> 1 / 2 </think> <answer> 0.5 </answer>"
    # math checker: 0.5 == 1/2, so total = 2.0 * 1 + 1.0 * 1 = 3.0
    math_scorer = RewardScorer({"accuracy": 2.0, "format": 1.0}, accuracy_function="math")
    assert math_scorer([completion], [half]).total == [3.0]
    # a component may also name a checker directly; weights may be negative: -1.0 * 1 = -1.0
    assert RewardScorer({"math": -1.0}, accuracy_function="integer")([completion], [half]).total == [-1.0]


def test_scorer_empty_batch():
    batch = RewardScorer({"accuracy": 1.0}, accuracy_function="integer")([], [])
    assert (batch.total, batch.components, batch.reasons) == ([], {"accuracy": []}, {"accuracy": []})
    assert batch.health == {"reward_health/accuracy/timeouts": 0, "reward_health/accuracy/parse_failures": 0,
                            "reward_health/accuracy/exceptions": 0}


@pytest.mark.parametrize(
    "weights, accuracy_function, message",
    [
        (
            {"acuracy": 1.0},
            "integer",
            "unknown reward component 'acuracy'; valid components: accuracy, format, integer, math, countdown, code, "
            "file.py:function, module:function",
        ),
        ({"accuracy": 1.0}, "exact", "unknown reward function 'exact'; valid names: format, integer, math, "
                                     "countdown, code"),
        ({}, "integer", "reward weights are empty"),
    ],
)
def test_scorer_configuration_errors(weights, accuracy_function, message):
    with pytest.raises(ValueError) as error:
        RewardScorer(weights, accuracy_function)
    assert message in str(error.value)


def test_scorer_length_mismatch():
    scorer = RewardScorer({"format": 1.0}, accuracy_function="integer")
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        scorer(["<answer>1</answer>", "<answer>2</answer>"], [SUMS])


# ----------------------------------------------------------------------------
# Score: a float with a reason; what a reward may return


@pytest.mark.parametrize(
    "returned, value, reason",
    [
        (1.0, 1.0, ""),
        (0, 0.0, ""),
        (True, 1.0, ""),  # a bool is a number
        ((0.5, "tests failed 1/2"), 0.5, "tests failed 1/2"),
        ([0.25, "a list pair"], 0.25, "a list pair"),
        (Score(0.0, "no answer tag", PARSE_FAILURE), 0.0, "no answer tag"),
    ],
)
def test_as_score_accepts_a_float_a_pair_or_a_score(returned, value, reason):
    score = as_score(returned)
    assert (float(score), score.reason) == (value, reason)


@pytest.mark.parametrize("returned, error", [(None, TypeError), ("1.0", TypeError), ((1.0, 2.0), TypeError),
                                             ((1.0, "a", "b"), TypeError), (float("nan"), ValueError),
                                             (float("inf"), ValueError)])
def test_as_score_rejects_everything_else(returned, error):
    with pytest.raises(error):
        as_score(returned)


def test_score_is_a_float_that_pickles_with_its_reason():
    import pickle

    score = Score(0.5, "tests failed 1/2", TIMEOUT)
    assert score == 0.5 and score + 1 == 1.5  # arithmetic and comparison as a float
    copy = pickle.loads(pickle.dumps(score))
    assert (float(copy), copy.reason, copy.failure) == (0.5, "tests failed 1/2", "timeout")
    with pytest.raises(ValueError, match="unknown failure kind"):
        Score(0.0, "x", "crash")


@pytest.mark.parametrize(
    "reward, gold, completion, reason",
    [
        (format_reward, "17", "<answer> 17 </answer>", "does not start with <think>"),
        (format_reward, "17", "<think> a </think> <answer> 17 </answer> more", "does not end with </answer>"),
        (format_reward, "17", "<think> </think> <answer> 17 </answer>", "empty think block"),
        (format_reward, "17", "<think> a <answer> </think> <answer> 17 </answer>", "a tag inside the think block"),
        (integer_reward, "17", "<answer> 17 </answer>", "correct"),
        (integer_reward, "17", "<answer> 16 </answer>", "wrong answer"),
        (integer_reward, "17", "<answer> 17.0 </answer>", "answer is not an integer"),
        (integer_reward, "17", "17", "no answer tag"),
        (math_reward, "\\frac{1}{2}", "<answer> 0.5 </answer>", "correct"),
        (math_reward, "\\frac{1}{2}", "<answer> 0.4 </answer>", "wrong answer"),
        (math_reward, "2", "the answer is 2", "no answer tag"),
    ],
)
def test_rewards_explain_their_scores(reward, gold, completion, reason):
    assert reward(completion, Example(id="x", prompt="?", answer=gold)).reason == reason


# ----------------------------------------------------------------------------
# countdown_reward: numbers [19, 36, 55, 7], target 65 (TinyZero's kind of problem)

COUNTDOWN = Example(id="countdown-1", prompt="?", answer="", metadata={"numbers": [19, 36, 55, 7], "target": 65})

COUNTDOWN_CASES = [
    # completion, score, reason
    ("<answer> 55 + 36 - 7 - 19 </answer>", 1.0, "correct"),  # 91 - 26 = 65
    ("<think> try </think> <answer> (55 + 36) - (7 + 19) </answer>", 1.0, "correct"),
    ("<answer>\n19 + 55 - 36 / 36 * 7 ... </answer>", 0.0, "not an arithmetic expression (SyntaxError)"),
    ("<answer> 36 + 19 + 55 / 7 </answer>", 0.0, "equals 440/7, not 65"),  # every number once, wrong value
    # 36 unused
    ("<answer> 55 + 19 - 7 </answer>", 0.0, "uses [55, 19, 7]; each of [7, 19, 36, 55] must be used exactly once"),
    ("<answer> 55 + 19 - 7 - 2 + 0 * 36 </answer>", 0.0,
     "uses [55, 19, 7, 2, 0, 36]; each of [7, 19, 36, 55] must be used exactly once"),  # extra numbers
    ("<answer> 55 + 55 - 36 - 19 + 7 </answer>", 0.0,
     "uses [55, 55, 36, 19, 7]; each of [7, 19, 36, 55] must be used exactly once"),  # 55 twice
    ("<answer> 55 + 36 - 7 * 19 </answer>", 0.0, "equals -42, not 65"),  # right numbers, wrong value
    ("<answer> 55 + 36 / 7 - 19 </answer>", 0.0, "equals 288/7, not 65"),  # exact fractions, not floats
    ("<answer> 55 + 36 - 7 - 19 = 65 </answer>", 0.0, "not an arithmetic expression (SyntaxError)"),  # strict
    ("<answer> -7 + 55 + 36 - 19 </answer>", 0.0, "UnaryOp is not allowed; use numbers, + - * / and parentheses"),
    ("<answer> 55 + 36 - 7 ** 1 - 19 </answer>", 0.0, "Pow is not allowed; use numbers, + - * / and parentheses"),
    ("<answer> 55 + 36 - 7.0 - 19 </answer>", 0.0, "Constant is not allowed; use numbers, + - * / and parentheses"),
    ("<answer> 55 + 36 - 7 // 1 - 19 </answer>", 0.0, "FloorDiv is not allowed; use numbers, + - * / and parentheses"),
    ("<answer> __import__('os').system('rm -rf /') </answer>", 0.0,
     "Call is not allowed; use numbers, + - * / and parentheses"),  # parsed, never run
    ("<answer> (lambda: 65)() </answer>", 0.0, "Call is not allowed; use numbers, + - * / and parentheses"),
    ("<answer> x </answer>", 0.0, "Name is not allowed; use numbers, + - * / and parentheses"),
    ("<answer> 55 + 36 - 7 - 19 if 1 else 0 </answer>", 0.0,
     "IfExp is not allowed; use numbers, + - * / and parentheses"),
    ("<answer> 55 + 36 - 7 - 19; 1 </answer>", 0.0, "not an arithmetic expression (SyntaxError)"),
    ("<answer> (" * 1 + "(" * 300 + "1" + ")" * 300 + " </answer>", 0.0, "not an arithmetic expression (SyntaxError)"),
    ("<answer> " + "1+" * 600 + "1 </answer>", 0.0, "expression longer than 1000 characters"),
    ("<answer> " + "9" * 900 + " </answer>", 0.0,
     f"uses [{'9' * 900}]; each of [7, 19, 36, 55] must be used exactly once"),
    ("55 + 36 - 7 - 19", 0.0, "no answer tag"),
    ("<answer></answer>", 0.0, "not an arithmetic expression (SyntaxError)"),
]


@pytest.mark.parametrize("completion, score, reason", COUNTDOWN_CASES)
def test_countdown_reward(completion, score, reason):
    result = countdown_reward(completion, COUNTDOWN)
    assert (float(result), result.reason) == (score, reason)


def test_countdown_division_is_exact():
    # (1 / 3) * 3 is exactly 1 with fractions; 1 / 3 * 3 in floats is 1.0 too, but (7 / 3) * 3 - 7 is not 0.0
    example = Example(id="c", prompt="?", answer="", metadata={"numbers": [7, 3, 3, 7], "target": 0})
    assert countdown_reward("<answer> (7 / 3) * 3 - 7 </answer>", example) == 1.0
    by_zero = Example(id="c", prompt="?", answer="", metadata={"numbers": [5, 3, 3], "target": 1})
    assert countdown_reward("<answer> 5 / (3 - 3) </answer>", by_zero).reason == "division by zero"


@pytest.mark.parametrize("metadata, field", [({}, "numbers"), ({"numbers": [1, 2], "target": "3"}, "target"),
                                             ({"numbers": [1, -2], "target": 3}, "numbers"),
                                             ({"numbers": "1 2", "target": 3}, "numbers")])
def test_countdown_needs_numbers_and_target(metadata, field):
    with pytest.raises(ValueError, match=f"example 'bad': field '{field}'"):
        countdown_reward("<answer> 1 + 2 </answer>", Example(id="bad", prompt="?", answer="", metadata=metadata))


# ----------------------------------------------------------------------------
# code_reward (each test is a sandboxed run, about 40 ms)

ADD = Example(id="code-add", prompt="?", answer="", metadata={
    "tests": [{"input": "2 3\n", "output": "5"}, {"input": "-4 10\n", "output": "6\n"}],
    "asserts": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]})
ADD_PROGRAM = ("def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    import sys\n"
               "    data = sys.stdin.read().split()\n    if data:\n        print(add(int(data[0]), int(data[1])))\n")


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("```python\nprint(1)\n```", "print(1)\n"),
        ("Here:\n```py\nprint(1)\n```\nDone.", "print(1)\n"),
        ("```\nprint(1)\n```", "print(1)\n"),  # an untagged fence is taken as Python
        ("```python\nprint(1)\n```\n```python\nprint(2)\n```", "print(2)\n"),  # the last Python block
        ("```python\nprint(1)\n```\n```text\nout\n```", "print(1)\n"),  # a non-Python block is skipped
        ("print(3)", "print(3)"),  # no fence: the whole answer
        ("```python\nprint(1)", "```python\nprint(1)"),  # unclosed fence: the whole answer (a syntax error)
    ],
)
def test_extract_code(answer, expected):
    from r1zero.rewards.code import extract_code

    assert extract_code(f"<think> x </think> <answer>{answer}</answer>") == expected


def test_code_reward_partial_credit_and_all_or_nothing():
    right = f"<answer>\n```python\n{ADD_PROGRAM}```\n</answer>"
    assert code_reward(right, ADD) == Score(1.0) and code_reward(right, ADD).reason == "tests passed 4/4"
    # a - b: 2 - 3 = -1 (not 5), -4 - 10 = -14 (not 6), add(2, 3) = -1, add(-1, 1) = -2: no test passes
    off_by_sign = right.replace("a + b", "a - b")
    assert code_reward(off_by_sign, ADD).reason == "tests failed 4/4 (test 1: wrong output)"
    # a program right on stdin tests but without add(): 2 of 4 pass -> 0.5, or 0.0 all-or-nothing
    stdin_only = "<answer>\nx, y = map(int, input().split())\nprint(x + y)\n</answer>"
    assert float(code_reward(stdin_only, ADD)) == 0.5
    assert float(code_reward(stdin_only, ADD, partial_credit=False)) == 0.0
    assert code_reward(stdin_only, ADD).reason == "tests failed 2/4 (test 3: exit status 1: EOFError: EOF when " \
                                                  "reading a line)"


def test_code_reward_output_comparison_ignores_trailing_whitespace_only():
    example = Example(id="c", prompt="?", answer="", metadata={"tests": [{"input": "", "output": "a b\nc"}]})
    assert code_reward("<answer>print('a b   ')\nprint('c')\nprint()</answer>", example) == 1.0
    assert code_reward("<answer>print(' a b')\nprint('c')</answer>", example) == 0.0  # leading space differs
    assert code_reward("<answer>print('a  b')\nprint('c')</answer>", example) == 0.0  # inner space differs


def test_code_reward_asserts_cannot_be_passed_by_exiting_early():
    example = Example(id="c", prompt="?", answer="", metadata={"asserts": ["assert add(1, 1) == 3"]})
    for program in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"):
        score = code_reward(f"<answer>{program}</answer>", example)
        assert score == 0.0 and score.reason == "tests failed 1/1 (test 1: stopped before the assert ran)"


@pytest.mark.parametrize(
    "completion, reason",
    [
        ("no answer", "no answer tag"),
        ("<answer>   </answer>", "no code in the answer"),
        ("<answer>def f(:\n    pass</answer>", "syntax error: line 1: invalid syntax"),
        ("<answer>" + "x = 1\n" * 20_000 + "</answer>", "code longer than 100000 characters"),
        # a null byte: SyntaxError in Python 3.11.4+ (ValueError before, reported as "cannot compile: ValueError")
        ("<answer>print(1)\x00</answer>", "syntax error: source code string cannot contain null bytes"),
    ],
)
def test_code_reward_parse_failures(completion, reason):
    score = code_reward(completion, ADD)
    assert (score, score.reason, score.failure) == (0.0, reason, "parse_failure")


def test_code_reward_time_budget_fails_the_tests_it_cannot_start():
    score = code_reward("<answer>while True:\n    pass</answer>", ADD, test_timeout_seconds=0.5, budget_seconds=0.8)
    # test 1 runs 0.5 s, test 2 gets the remaining ~0.3 s, tests 3 and 4 cannot start
    assert score == 0.0 and score.failure == "timeout" and score.reason.startswith("tests failed 4/4 (test 1: timeout")


def test_code_reward_needs_tests():
    with pytest.raises(ValueError, match="example 'none': no tests"):
        code_reward("<answer>print(1)</answer>", Example(id="none", prompt="?", answer=""))
    bad = Example(id="bad", prompt="?", answer="", metadata={"tests": [{"input": 1, "output": "1"}]})
    with pytest.raises(ValueError, match="field 'tests', item 1"):
        code_reward("<answer>print(1)</answer>", bad)


# ----------------------------------------------------------------------------
# the scorer: reasons, health counters, rewards that raise, custom rewards


def test_scorer_counts_exceptions_and_parse_failures_per_component(monkeypatch):
    def flaky(completion, example):
        if "boom" in completion:
            raise KeyError("no such field")
        return (0.25, "fine")

    monkeypatch.setitem(REWARD_FUNCTIONS, "flaky", flaky)
    scorer = RewardScorer({"integer": 1.0, "flaky": 2.0}, accuracy_function="integer")
    batch = scorer(["<answer> 17 </answer>", "boom", "<answer> x </answer>"], [SUMS] * 3)
    assert batch.components == {"integer": [1.0, 0.0, 0.0], "flaky": [0.25, 0.0, 0.25]}
    assert batch.total == [1.5, 0.0, 0.5]  # 1.0 * integer + 2.0 * flaky
    assert batch.reasons == {"integer": ["correct", "no answer tag", "answer is not an integer"],
                             "flaky": ["fine", "KeyError: 'no such field'", "fine"]}
    assert batch.health == {
        "reward_health/integer/timeouts": 0, "reward_health/integer/parse_failures": 2,
        "reward_health/integer/exceptions": 0,
        "reward_health/flaky/timeouts": 0, "reward_health/flaky/parse_failures": 0,
        "reward_health/flaky/exceptions": 1,
    }


def test_scorer_stops_when_a_reward_raises_on_every_sample(monkeypatch):
    monkeypatch.setitem(REWARD_FUNCTIONS, "broken", lambda completion, example: example.metadata["missing"])
    scorer = RewardScorer({"format": 1.0, "broken": 1.0}, accuracy_function="integer")
    with pytest.raises(RewardError, match="reward 'broken' raised on all 2 samples of this step, e.g. KeyError"):
        scorer(["a", "b"], [SUMS] * 2)
    lenient = RewardScorer({"broken": 1.0}, accuracy_function="integer", stop_when_all_fail=False)
    assert lenient(["a", "b"], [SUMS] * 2).health["reward_health/broken/exceptions"] == 2


def test_scorer_treats_a_nan_reward_as_an_exception(monkeypatch):
    monkeypatch.setitem(REWARD_FUNCTIONS, "nan", lambda completion, example: float("nan"))
    batch = RewardScorer({"nan": 1.0}, "integer", stop_when_all_fail=False)(["a"], [SUMS])
    assert batch.total == [0.0] and batch.reasons["nan"] == ["ValueError: a reward returned nan; rewards must be "
                                                             "finite numbers"]


BREVITY = '''
def brevity(completion, example):
    """1.0 for an empty completion, falling linearly to 0.0 at 40 characters."""
    return max(0.0, 1.0 - len(completion) / 40), f"{len(completion)} characters"
'''


def test_custom_reward_from_a_file(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(BREVITY)
    monkeypatch.chdir(tmp_path)  # paths are relative to the current directory
    scorer = RewardScorer({"accuracy": 1.0, "my_rewards.py:brevity": 0.5}, accuracy_function="integer")
    batch = scorer(["<answer> 17 </answer>", "x" * 50], [SUMS] * 2)
    # "<answer> 17 </answer>" is 21 characters: brevity 1 - 21/40 = 0.475; total 1.0 + 0.5 * 0.475 = 1.2375
    assert batch.components["my_rewards.py:brevity"] == [0.475, 0.0]
    assert batch.total == [pytest.approx(1.2375), 0.0]
    assert batch.reasons["my_rewards.py:brevity"] == ["21 characters", "50 characters"]


def test_custom_reward_from_a_module():
    from r1zero.rewards import load_reward_function

    assert load_reward_function("r1zero.rewards.format:format_reward") is format_reward


@pytest.mark.parametrize(
    "spec, message",
    [
        ("missing.py:brevity", "file not found"),
        ("my_rewards.py:brevityy", "no function 'brevityy' in r1zero_custom_reward_my_rewards_"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("my_rewards.py:", "expected path/to/file.py:function or package.module:function"),
    ],
)
def test_custom_reward_errors_say_what_is_wrong(tmp_path, monkeypatch, spec, message):
    from r1zero.rewards import load_reward_function

    (tmp_path / "my_rewards.py").write_text(BREVITY)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_reward_function(spec)
