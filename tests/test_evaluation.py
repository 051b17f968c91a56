"""Held-out evaluation: every metric on a stub engine whose completions are written out by hand, the majority
vote's answer equivalence, and `r1zero eval`'s JSON and samples file."""

import json

import pytest

from r1zero.cli import main
from r1zero.evaluation import evaluate, majority_vote, pass_at_k_sizes, plain_metrics, same_answer
from r1zero.example import Example
from r1zero.rewards import integer_reward, math_reward
from r1zero.rollout import Generation

# Three problems, one greedy and K = 4 sampled completions each. Token count = whitespace-separated words.
EXAMPLES = [Example("p0", "What is 3 + 4", "7"), Example("p1", "What is 4 + 5", "9"),
            Example("p2", "What is 2 + 3", "5")]
GREEDY = ["<think> 3 + 4 = 7 </think> <answer> 7 </answer>",  # correct
          "<think> 9 </think> <answer> 8 </answer>",  # wrong
          "<think> 5 </think> <answer> 5 </answer>"]  # correct
SAMPLED = [
    ["<think> 3 + 4 = 8 </think> <answer> 8 </answer>",  # wrong,   format 1, 10 tokens
     "<think> 3 + 4 = 7 </think> <answer> 07 </answer>",  # correct, format 1, 10 tokens
     "<think> 7 </think> <answer> +7 </answer>",  # correct, format 1, 6 tokens
     "<answer> 7 </answer>"],  # correct, format 0, 3 tokens
    ["<think> 9 </think> <answer> 9 </answer>",  # correct, format 1, 6
     "<think> 8 </think> <answer> 8 </answer>",  # wrong,   format 1, 6
     "<think> 8 </think> <answer> 08 </answer>",  # wrong,   format 1, 6
     "<think> wait no answer"],  # no answer, format 0, 4
    ["<think> 2 + 3 </think> <answer> six </answer>",  # wrong, format 1, 8
     "<think> 2 + 3 </think> <answer> six </answer>",  # wrong, format 1, 8
     "<think> 2 + 3 </think> <answer> 6 </answer>",  # wrong, format 1, 8
     "2 + 3 = 6"],  # no answer, format 0, 5
]


class WordTokenizer:
    """Token ids are indexes into a growing word list; decode joins the words with spaces."""

    def __init__(self):
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        for word in text.split():
            if word not in self.words:
                self.words.append(word)
        return [self.words.index(word) for word in text.split()]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(self.words[i] for i in ids)


class StubEngine:
    """Prompt [i] is problem i: greedy (temperature 0) gives GREEDY[i], sampling gives SAMPLED[i] in order."""

    def __init__(self, tokenizer: WordTokenizer):
        self.tokenizer = tokenizer
        self.calls: list[tuple[int, int]] = []  # (prompts, samples per prompt)

    def generate(self, prompts, samples_per_prompt, max_new_tokens, temperature, generator=None):
        self.calls.append((len(prompts), samples_per_prompt))
        texts = [GREEDY[p[0]] for p in prompts] if temperature == 0 else \
            [SAMPLED[p[0]][s] for p in prompts for s in range(samples_per_prompt)]
        completions = [self.tokenizer.encode(text) for text in texts]
        return Generation(completions, [True] * len(completions))


def test_metrics_and_samples_of_a_hand_scored_evaluation():
    tokenizer = WordTokenizer()
    engine = StubEngine(tokenizer)
    result = evaluate(engine, tokenizer, [[0], [1], [2]], EXAMPLES, "integer", samples=4, temperature=1.0,
                      max_new_tokens=16, chunk=2)
    assert engine.calls == [(2, 1), (2, 4), (1, 1), (1, 4)]  # chunks of 2 then 1 problems
    expected = {
        "eval/accuracy_greedy": 2 / 3,  # p0 and p2 right
        "eval/pass@1": 1 / 3,  # (3/4 + 1/4 + 0/4) / 3 correct samples
        # pass@2 = 1 - C(4-c, 2)/C(4, 2): p0 c=3 -> 1 - 0/6 = 1; p1 c=1 -> 1 - 3/6 = 0.5; p2 c=0 -> 0
        "eval/pass@2": (1 + 0.5 + 0) / 3,
        "eval/pass@4": (1 + 1 + 0) / 3,  # any correct sample among all 4
        # maj@4: p0 "7"/"07"/"+7" (3 votes) beat "8": right. p1 "8"/"08" (2 votes) beat "9": wrong (string
        # equality would have made three 1-vote ties and picked "9"). p2 "six" x2 beats "6": wrong.
        "eval/maj@4": 1 / 3,
        "eval/format": 9 / 12,  # 3 of 4 samples well formatted in each problem
        "eval/response_length": (29 + 22 + 29) / 12,  # tokens: 10+10+6+3, 6+6+6+4, 8+8+8+5
    }
    assert result.metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value), key
    assert len(result.samples) == 12
    assert result.samples[1] == {"problem_id": "p0", "sample_index": 1, "completion": SAMPLED[0][1],
                                 "answer": "07", "correct": True, "format": 1.0}
    assert result.samples[7] == {"problem_id": "p1", "sample_index": 3, "completion": "<think> wait no answer",
                                 "answer": None, "correct": False, "format": 0.0}
    assert [r["correct"] for r in result.samples] == [False, True, True, True, True] + [False] * 7


def test_write_samples_writes_one_json_line_per_sample(tmp_path):
    tokenizer = WordTokenizer()
    result = evaluate(StubEngine(tokenizer), tokenizer, [[2]], EXAMPLES[2:], "integer", 4, 1.0, 16)
    path = result.write_samples(tmp_path / "deep" / "step_000004.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["problem_id"], r["sample_index"], r["answer"]) for r in lines] == [
        ("p2", 0, "six"), ("p2", 1, "six"), ("p2", 2, "6"), ("p2", 3, None)]


@pytest.mark.parametrize("samples, sizes", [(1, [1]), (2, [1, 2]), (4, [1, 2, 4]), (6, [1, 2, 4, 6]),
                                            (16, [1, 2, 4, 8, 16])])
def test_pass_at_k_sizes_are_powers_of_two_then_k(samples, sizes):
    assert pass_at_k_sizes(samples) == sizes


@pytest.mark.parametrize("reward, answer, reference, same", [
    (integer_reward, "07", "7", True),
    (integer_reward, "+7", "7", True),
    (integer_reward, "7.0", "7", False),  # the integer reward rejects decimals
    (integer_reward, "seven", "seven", True),  # same text: same vote, though not a valid integer reference
    (integer_reward, "7", "seven", False),  # "seven" cannot be an integer reference: ValueError means no match
    (math_reward, "0.5", "\\frac{1}{2}", True),
    (math_reward, "1/2", "0.5", True),
    (math_reward, "\\frac{1}{3}", "0.5", False),
])
def test_same_answer_uses_the_reward_equivalence(reward, answer, reference, same):
    assert same_answer(reward, answer, reference) is same


@pytest.mark.parametrize("answers, winner", [
    (["8", "07", None, "+7", "8", "7"], 1),  # 7 x3 beats 8 x2; index of the group's first member
    (["3", "4"], 0),  # tie: the group formed first
    ([None, None], None),  # nobody voted
    ([None, "5"], 1),
])
def test_majority_vote_with_the_integer_reward(answers, winner):
    assert majority_vote(answers, integer_reward) == winner


def test_majority_vote_with_math_equivalence():
    # "0.5", "1/2" and "\frac{1}{2}" are one vote of 3; "1/3" x2 loses though it is the most frequent string
    assert majority_vote(["1/3", "0.5", "1/3", "1/2", "\\frac{1}{2}"], math_reward) == 1


def test_plain_metric_names():
    logged = {"eval/accuracy_greedy": 0.5, "eval/pass@1": 0.25, "eval/pass@2": 0.4, "eval/maj@2": 0.3,
              "eval/format": 0.9, "eval/response_length": 12.0}
    assert plain_metrics(logged) == {"greedy_accuracy": 0.5, "pass@1": 0.25, "pass@2": 0.4, "maj@2": 0.3,
                                     "format_rate": 0.9, "mean_response_length": 12.0}


def test_eval_command_writes_the_json_and_the_samples_file(llama_dir, tmp_path, capsys):
    output = tmp_path / "eval.json"
    code = main(["eval", "--model", str(llama_dir), "--problems", "3", "--samples", "4", "--max-new-tokens", "6",
                 "--device", "cpu", "--output", str(output)])
    assert code == 0
    written = json.loads(output.read_text())
    assert list(written) == ["greedy_accuracy", "pass@1", "pass@2", "pass@4", "maj@4", "format_rate",
                             "mean_response_length"]
    assert 1 <= written["mean_response_length"] <= 6
    assert written["pass@1"] <= written["pass@2"] <= written["pass@4"]  # more tries never pass less
    samples = [json.loads(line) for line in (tmp_path / "eval.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 4
    assert [r["sample_index"] for r in samples] == [0, 1, 2, 3] * 3
    assert all(r.keys() >= {"problem_id", "sample_index", "completion", "answer", "correct"} for r in samples)
    assert written["pass@1"] == pytest.approx(sum(r["correct"] for r in samples) / 12)
    assert written["format_rate"] == pytest.approx(sum(r["format"] for r in samples) / 12)


def test_eval_command_refuses_both_task_and_dataset(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--task", "sums", "--dataset", str(tmp_path / "x.jsonl")])
    assert "not allowed with argument" in capsys.readouterr().err
