"""The built-in base model's corpus: no held-out problem, no task in the template, a tokenizer that covers it."""

import re

import pytest

from r1zero.models import SHIPPED_MODEL
from r1zero.pretrain import assert_no_held_out_problem, build_corpus, build_tokenizer, reduction_chain
from r1zero.tasks import sums


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(20000, seed=0)


def test_reduction_chain():
    assert reduction_chain((3, 5, 2), "++") == "3 + 5 + 2 = 8 + 2 = 10"
    assert reduction_chain([3, 5, 2, 7], "+-+") == "3 + 5 - 2 + 7 = 8 - 2 + 7 = 6 + 7 = 13"


def test_corpus_never_holds_a_held_out_problem(corpus):
    assert_no_held_out_problem(corpus)
    notes = [d for d in corpus if "<think>" not in d and d.count("+") >= 2 and d.count("=") >= 2]
    assert len(notes) > 1000


def test_template_never_shows_a_sum_of_three_or_more_numbers(corpus):
    """Inside the template: expressions with a minus worked out, and two-number sums, but never a sum of three or
    more numbers, asked or standing alone at any point of a worked answer."""
    dialogues = [d for d in corpus if "Assistant:" in d]
    assert len(dialogues) > 5000
    worked = 0
    for document in dialogues:
        question, reply = document.split("User:")[1].split("Assistant:")
        for expression in [question.removeprefix(" What is ").rstrip(". ")] + re.findall(r"<think> (.*?) </think>",
                                                                                         reply)[0:1]:
            for stage in expression.split(" = "):
                assert "-" in stage or stage.count("+") <= 1, document
        worked += "=" in reply
    assert worked > 0.25 * len(dialogues)  # the worked style is about 30%
    assert any(re.search(r"What is \d+ \+ \d+\. Assistant: <think> \d+ \+ \d+ = \d+ </think>", d) for d in dialogues)


def test_held_out_check_catches_a_leak_even_inside_a_worked_sum():
    numbers = next(tuple(e.metadata["numbers"]) for e in sums.held_out(50) if len(e.metadata["numbers"]) == 3)
    with pytest.raises(AssertionError, match="leaked"):
        assert_no_held_out_problem(["1 + 2 = 3 . " + reduction_chain(numbers, "++") + " ."])
    # (a, b, c) held out is also the middle of the working of (x, a - x, b, c): "x + (a - x) + b + c = a + b + c"
    a, b, c = numbers
    if a >= 2:
        chain = reduction_chain((1, a - 1, b, c), "+++")
        assert f"{a} + {b} + {c}" in chain
        with pytest.raises(AssertionError, match="leaked"):
            assert_no_held_out_problem([f"What is {chain.split(' = ')[0]} ? {chain} ."])


def test_tokenizer_covers_the_corpus_and_every_total(corpus):
    tokenizer = build_tokenizer(corpus)
    ids = tokenizer(" ".join(corpus[:500]))["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert len(tokenizer("</answer>", add_special_tokens=False)["input_ids"]) == 1
    largest = sums.MAX_DIGIT * sums.MAX_TERMS
    assert all(len(tokenizer(str(n), add_special_tokens=False)["input_ids"]) == 1 for n in range(largest + 1))


def test_shipped_model_loads_with_plain_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
    assert model.config.vocab_size == len(tokenizer)
    assert 0.3e6 < sum(p.numel() for p in model.parameters()) < 5e6


def test_shipped_model_solves_a_minority_of_held_out_problems_when_sampling():
    """The design's premise, measured on the shipped checkpoint: some sampled answers are right (RL has a signal),
    most are not (RL has something to find). docs/builtin-task.md gives the full numbers."""
    import torch

    from r1zero.evaluation import evaluate
    from r1zero.models import load_model, load_tokenizer
    from r1zero.rollout.transformers_engine import TransformersEngine
    from r1zero.templates import STOP_STRING, build_prompt

    tokenizer = load_tokenizer(SHIPPED_MODEL)
    model = load_model(SHIPPED_MODEL, "float32", torch.device("cpu"), trainable=False)
    problems = sums.held_out(100)
    prompts = [tokenizer(build_prompt(p.prompt), add_special_tokens=False)["input_ids"] for p in problems]
    result = evaluate(TransformersEngine(model, tokenizer, STOP_STRING), tokenizer, prompts, problems, sums.ACCURACY_REWARD,
                      4, 1.0, 48, torch.Generator().manual_seed(0))
    assert 0.02 <= result.metrics["eval/pass@1"] <= 0.4
    assert result.metrics["eval/pass@4"] >= 1.5 * result.metrics["eval/pass@1"]
