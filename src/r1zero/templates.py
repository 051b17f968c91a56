"""Prompt templates: how a question is shown to the model.

    build_prompt("What is 3 + 5?")                          # the R1-Zero template, for base models
    build_prompt("What is 3 + 5?", "chat", tokenizer)       # the same instruction, in an instruct model's chat format

The model's completion is everything it generates after the prompt ("Assistant:" for the R1-Zero
template); generation stops at STOP_STRING or at the end-of-sequence token.
"""

from __future__ import annotations

# Table 1 of the DeepSeek-R1 paper (DeepSeek-AI, 2025), word for word; "prompt" there is {prompt} here.
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user "
    "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. User: {prompt}. Assistant:"
)

# The instruction sentences of the template (everything before "User:"), used as the system
# message of the "chat" template.
R1_ZERO_INSTRUCTION = R1_ZERO_TEMPLATE.split("User:")[0].strip()

TEMPLATES = ("r1_zero", "chat")


def tool_sentence(call_start: str = "<python>", call_end: str = "</python>", output_start: str = "<output>",
                  output_end: str = "</output>") -> str:
    """The one sentence a run with --tools python adds to the instruction (no example of a call: the model is
    told that it may, not shown how to reason with it).

    >>> tool_sentence()
    'The assistant may run Python code by writing it within <python> </python> tags, and what the code prints is then shown within <output> </output> tags.'
    """
    return (f"The assistant may run Python code by writing it within {call_start} {call_end} tags, and what the code "
            f"prints is then shown within {output_start} {output_end} tags.")

# The paper's format ends with </answer>: generation stops there or at EOS. The stop string is
# kept in the completion, so the rewards see the closing tag.
STOP_STRING = "</answer>"


def build_prompt(question: str, template: str = "r1_zero", tokenizer=None, extra_instruction: str = "") -> str:
    """The text given to the model for one question; `extra_instruction` (a sentence such as tool_sentence())
    goes after the instruction's last sentence, before "User:" (r1_zero) or at the end of the system message (chat).

    "r1_zero": R1_ZERO_TEMPLATE with the question in place of {prompt}; for base models.
    "chat":    for instruct models: tokenizer.apply_chat_template with a system message holding
               the R1-Zero instruction and a user message holding the question, ending with the
               assistant's turn. If the chat template rejects a system message (it raises, as
               Gemma's does), the instruction is folded into the user message instead.

    >>> build_prompt("What is 3 + 5?").endswith("User: What is 3 + 5?. Assistant:")
    True
    """
    if template == "r1_zero":
        template_text = R1_ZERO_TEMPLATE
        if extra_instruction:
            template_text = template_text.replace(" User:", f" {extra_instruction} User:", 1)
        return template_text.format(prompt=question)
    if template == "chat":
        return _build_chat_prompt(question, tokenizer, extra_instruction)
    raise ValueError(f"unknown template {template!r}; valid templates: {', '.join(TEMPLATES)}")


def _build_chat_prompt(question: str, tokenizer, extra_instruction: str = "") -> str:
    if tokenizer is None:
        raise ValueError('template "chat" needs the tokenizer whose chat template formats the messages')
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            'template "chat" needs a tokenizer with a chat template, and this tokenizer has none '
            '(a base model?); use template "r1_zero" instead'
        )
    from jinja2 import TemplateError  # transformers renders chat templates with jinja2

    instruction = f"{R1_ZERO_INSTRUCTION} {extra_instruction}".strip()
    with_system = [
        {"role": "system", "content": instruction},
        {"role": "user", "content": question},
    ]
    try:
        return tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        # The chat template rejects a system role: fold the instruction into the user message.
        folded = [{"role": "user", "content": f"{instruction}\n\n{question}"}]
        return tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)


def encode_prompts(questions: list[str], template: str, tokenizer, extra_instruction: str = "") -> list[list[int]]:
    """The token ids of each question in its template (build_prompt), without special tokens added: what the
    engine generates from, in training and in `r1zero eval`."""
    return [tokenizer(build_prompt(question, template, tokenizer, extra_instruction),
                      add_special_tokens=False)["input_ids"] for question in questions]
