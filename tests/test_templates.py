"""Tests of r1zero.templates: the paper's template, word for word, and the chat variant."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from r1zero.templates import R1_ZERO_INSTRUCTION, R1_ZERO_TEMPLATE, STOP_STRING, TEMPLATES, build_prompt

# Table 1 of the DeepSeek-R1 paper, typed out again here so a drift in the module shows up.
PAPER_TABLE_1 = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: prompt. Assistant:"
)

INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)

# Renders each message as <|role|>content and ends with the assistant's turn.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# The same, but refusing a system message the way Gemma's template does.
NO_SYSTEM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "<eos>": 1, "what": 2, "is": 3}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>")
    tokenizer.chat_template = chat_template
    return tokenizer


def test_template_is_the_papers_table_1_word_for_word():
    assert R1_ZERO_TEMPLATE.replace("{prompt}", "prompt") == PAPER_TABLE_1
    assert R1_ZERO_TEMPLATE.count("{prompt}") == 1


def test_instruction_is_everything_before_user():
    assert R1_ZERO_INSTRUCTION == INSTRUCTION


def test_constants():
    assert TEMPLATES == ("r1_zero", "chat")
    assert STOP_STRING == "</answer>"


@pytest.mark.parametrize(
    "question, expected_tail",
    [
        ("What is 3 + 5?", " User: What is 3 + 5?. Assistant:"),
        # braces in the question (LaTeX) are kept as they are, not treated as format fields
        ("Simplify \\frac{2}{4}", " User: Simplify \\frac{2}{4}. Assistant:"),
        ("{prompt}", " User: {prompt}. Assistant:"),
    ],
)
def test_r1_zero_prompt_substitution(question, expected_tail):
    assert build_prompt(question) == INSTRUCTION + expected_tail
    assert build_prompt(question, "r1_zero") == INSTRUCTION + expected_tail


def test_chat_prompt_puts_instruction_in_system_message():
    prompt = build_prompt("What is 3 + 5?", "chat", make_tokenizer(SIMPLE_CHAT_TEMPLATE))
    assert prompt == f"<|system|>{INSTRUCTION}\n<|user|>What is 3 + 5?\n<|assistant|>"


def test_chat_prompt_folds_instruction_into_user_when_system_is_rejected():
    prompt = build_prompt("What is 3 + 5?", "chat", make_tokenizer(NO_SYSTEM_CHAT_TEMPLATE))
    assert prompt == f"<|user|>{INSTRUCTION}\n\nWhat is 3 + 5?\n<|assistant|>"


@pytest.mark.parametrize(
    "template, tokenizer, message_parts",
    [
        ("chat", None, ["chat", "tokenizer"]),
        ("chat", "no chat template", ["no", "chat template", '"r1_zero"']),
        ("r1-zero", None, ["'r1-zero'", "r1_zero, chat"]),
    ],
)
def test_build_prompt_errors(template, tokenizer, message_parts):
    if tokenizer == "no chat template":
        tokenizer = make_tokenizer(None)
    with pytest.raises(ValueError) as error:
        build_prompt("What is 3 + 5?", template, tokenizer)
    for part in message_parts:
        assert part in str(error.value)
