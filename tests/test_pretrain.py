"""The built-in base model's corpus: no held-out problem, no task in the template, a tokenizer that covers it."""

import pytest

from r1zero.pretrain import (SHIPPED_MODEL, assert_no_held_out_problem, build_corpus, build_tokenizer,
                             reduction_chain)
from r1zero.tasks import sums


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(20000, seed=0)


def test_reduction_chain():
    assert reduction_chain((3, 5, 2)) == "3 + 5 + 2 = 8 + 2 = 10"
    assert reduction_chain([3, 8, 2], "max", max) == "3 max 8 max 2 = 8 max 2 = 8"


def test_corpus_never_holds_a_held_out_problem(corpus):
    assert_no_held_out_problem(corpus)
    notes = [d for d in corpus if "<think>" not in d and d.count("+") >= 2 and d.count("=") >= 2]
    assert len(notes) > 1000


def test_template_never_shows_a_sum_of_three_or_more_numbers(corpus):
    dialogues = [d for d in corpus if "Assistant:" in d]
    assert len(dialogues) > 5000
    sum_dialogues = [d for d in dialogues if "+" in d.split("User:")[1]]
    assert len(sum_dialogues) > 1000  # two-number sums appear, answered directly
    for document in sum_dialogues:
        question, reply = document.split("User:")[1].split("Assistant:")
        assert question.count("+") == 1  # never three or more numbers
        assert "=" not in reply  # never a worked sum


def test_held_out_check_catches_a_leak():
    held = next(e for e in sums.held_out(1))
    numbers = tuple(held.metadata["numbers"])
    with pytest.raises(AssertionError, match="leaked"):
        assert_no_held_out_problem(["1 + 2 = 3 . " + reduction_chain(numbers) + " ."])


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
