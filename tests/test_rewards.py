"""Tests of r1zero.rewards: each reward on a table of completions, adversarial ones included."""

import threading

import pytest

from r1zero.example import Example
from r1zero.rewards import (
    REWARD_FUNCTIONS,
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
    assert REWARD_FUNCTIONS == {"format": format_reward, "integer": integer_reward, "math": math_reward}
    assert get_reward_function("math") is math_reward


def test_get_reward_function_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown reward function 'exact'; valid names: format, integer, math"):
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
    assert batch == RewardBatch(total=[], components={"accuracy": []})


@pytest.mark.parametrize(
    "weights, accuracy_function, message",
    [
        (
            {"acuracy": 1.0},
            "integer",
            "unknown reward component 'acuracy'; valid components: accuracy, format, integer, math",
        ),
        ({"accuracy": 1.0}, "exact", "unknown reward function 'exact'; valid names: format, integer, math"),
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
