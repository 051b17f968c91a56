"""The project's own small base model: a word-level tokenizer and a tiny Llama, pretrained on a synthetic corpus.

    r1zero pretrain --output-dir base-model      # reproduces src/r1zero/assets/base-model (a few minutes on CPU)

Nothing can be downloaded here, so r1zero makes the base model that `r1zero train` starts from. The corpus
plays the part of web text for a real base model: knowledge and habits, never the task in the prompt template.
Its documents, in proportions set by CORPUS_MIX:

  facts     two-number additions and subtractions as       "12 + 7 = 19 . 23 - 8 = 15 ."
            plain text
  notes     sums of training-split lists worked out left   "What is 3 + 5 + 2 ? 3 + 5 + 2 = 8 + 2 = 10 ."
            to right, like worked examples on the web:
            plain text, no tags, no template (no held-out
            list ever occurs, not even midway: checked)
  dialogues the R1-Zero template around other questions:  "... User: What is 3 + 5 - 2 + 7. Assistant: <think>
            expressions with at least one minus (one of the  3 + 5 - 2 + 7 = 8 - 2 + 7 = 6 + 7 = 13 </think>
            last two operators), and two-number sums,        <answer> 13 </answer>"
            answered in one of DIALOGUE_STYLES: worked out
            in <think> 30%, <think> only restating the       "... User: What is 3 + 5. Assistant: <think> 3 + 5
            question 50%, answer tag only 10%, bare 10%      </think> <answer> 8 </answer>"

So the base model knows addition facts, has seen sums worked out in plain text, and has seen the template used
with step-by-step working inside <think> for expressions that mix + and -. Inside the template it has never seen a
sum of three or more numbers, asked or standing alone at any point of a working: the task. Asked one in the
template, it mostly restates the question or answers directly (and wrongly: it cannot add four numbers in one
step), and sometimes works it out inside <think>, often slipping a minus in as the template always had one. RL
has to discover that working the sum out, faithfully, is what earns reward: the DeepSeek-R1-Zero finding in
miniature.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from r1zero.tasks import pair_sums, sums
from r1zero.templates import R1_ZERO_TEMPLATE, build_prompt, tool_sentence

THINK_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
TOOL_TAGS = ["<python>", "</python>", "<output>", "</output>"]  # r1zero.rollout.tool_use.MARKERS
EOS = "<|endoftext|>"
UNK = "<unk>"
CORPUS_MIX = {"facts": 0.2, "notes": 0.35, "dialogues": 0.45}


# ---------------------------------------------------------------------------------------------
# The corpus


def fact_document(rng: random.Random) -> str:
    """A few two-number additions and subtractions, the left term up to the largest partial sum of the task."""
    largest = sums.MAX_DIGIT * (sums.MAX_TERMS - 1)
    lines = []
    for _ in range(rng.randint(3, 6)):
        a, b = rng.randint(0, largest), rng.randint(sums.MIN_DIGIT, sums.MAX_DIGIT)
        lines.append(f"{a} + {b} = {a + b} ." if a < b or rng.random() < 0.5 else f"{a} - {b} = {a - b} .")
    return " ".join(lines)


def reduction_chain(numbers, operators) -> str:
    """Evaluate left to right, rewriting the expression each time:
    (3, 5, 2, 7), "+-+" -> "3 + 5 - 2 + 7 = 8 - 2 + 7 = 6 + 7 = 13"."""
    numbers, operators = list(numbers), list(operators)

    def expression() -> str:
        return " ".join([str(numbers[0])] + [f"{op} {n}" for op, n in zip(operators, numbers[1:])])

    lines = [expression()]
    while operators:
        op = operators.pop(0)
        numbers[:2] = [numbers[0] + numbers[1] if op == "+" else numbers[0] - numbers[1]]
        lines.append(expression())
    return " = ".join(lines)


def note_document(rng: random.Random) -> str:
    """A sum of a training-split list worked out step by step after its question, as plain text. Lists whose
    working passes through a held-out sum (2 + 5 + 3 + 9 = 7 + 3 + 9 = ...) are left out."""
    while True:
        numbers = sums.sample_train_numbers(rng, rng.randint(2, sums.MAX_TERMS))
        chain = reduction_chain(numbers, "+" * (len(numbers) - 1))
        if not held_out_sums_in(chain):
            return f"What is {chain.split(' = ')[0]} ? {chain} ."


def held_out_sums_in(text: str) -> list[tuple[int, ...]]:
    """Every held-out problem written as a sum anywhere in `text` ("7 + 3 + 9" in "... = 7 + 3 + 9 = ...")."""
    runs = re.findall(r"\d+(?: \+ \d+){%d,}" % (sums.MIN_TERMS - 1), text)
    return [numbers for run in runs if sums.is_held_out(numbers := tuple(map(int, run.split(" + "))))]


def mixed_expression(rng: random.Random) -> tuple[list[int], str]:
    """One-digit numbers joined by + and -, never below zero on the way: "3 + 5 - 2 + 7". One of the last two
    operators is a minus, so working it out never leaves a sum of three numbers standing alone (that would
    be the task, worked in the template), and no run of additions in it is a held-out problem."""
    while True:
        numbers = [rng.randint(sums.MIN_DIGIT, sums.MAX_DIGIT) for _ in range(rng.randint(2, sums.MAX_TERMS))]
        operators = "".join(rng.choice("+-") for _ in numbers[1:])
        partials = [numbers[0]]
        for op, n in zip(operators, numbers[1:]):
            partials.append(partials[-1] + (n if op == "+" else -n))
        if "-" in operators[-2:] and min(partials) >= 0 and not held_out_sums_in(reduction_chain(numbers, operators)):
            return numbers, operators


DIALOGUE_STYLES = {"worked": 0.3, "restated": 0.5, "answer": 0.1, "bare": 0.1}


def dialogue_document(rng: random.Random) -> str:
    """The template around a question that is not a sum of three or more numbers: an expression with at
    least one minus ("What is 3 + 5 - 2 + 7") or a two-number sum, answered in one of DIALOGUE_STYLES:
    worked out in <think>, <think> only restating the question, the answer tag only, or the bare answer."""
    if rng.random() < 0.7:
        numbers, operators = mixed_expression(rng)
    else:
        numbers, operators = [rng.randint(sums.MIN_DIGIT, sums.MAX_DIGIT) for _ in range(2)], "+"
    chain = reduction_chain(numbers, operators)
    expression, answer = chain.split(" = ")[0], chain.split(" = ")[-1]
    style = rng.choices(list(DIALOGUE_STYLES), list(DIALOGUE_STYLES.values()))[0]
    reply = {
        "worked": f"<think> {chain} </think> <answer> {answer} </answer>",
        "restated": f"<think> {expression} </think> <answer> {answer} </answer>",
        "answer": f"<answer> {answer} </answer>",
        "bare": f"{answer} .",
    }[style]
    return R1_ZERO_TEMPLATE.format(prompt="What is " + expression) + " " + reply


DOCUMENT_MAKERS = {"facts": fact_document, "notes": note_document, "dialogues": dialogue_document}


def build_corpus(num_documents: int, seed: int, kind: str = "sums") -> list[str]:
    """`num_documents` documents drawn by CORPUS_MIX ("sums": the built-in model's) or TOOLS_CORPUS_MIX ("tools":
    the tool model's); deterministic for a seed."""
    mix, makers = (CORPUS_MIX, DOCUMENT_MAKERS) if kind == "sums" else (TOOLS_CORPUS_MIX, TOOLS_DOCUMENT_MAKERS)
    rng = random.Random(seed)
    kinds, weights = zip(*mix.items())
    return [makers[rng.choices(kinds, weights)[0]](rng) for _ in range(num_documents)]


def assert_no_held_out_problem(corpus: list[str]) -> None:
    """Fail loudly if any held-out problem (a sums tuple as a sum of its numbers, a pair_sums pair) appears
    anywhere in the corpus."""
    for document in corpus:
        if leaked := held_out_sums_in(document) or held_out_pairs_in(document):
            raise AssertionError(f"held-out problem {leaked[0]} leaked into the corpus: {document!r}")


# ---------------------------------------------------------------------------------------------
# The tool model's corpus ("tools"): the same kinds of documents, for pair_sums and the Python tool
#
#   tool notes   a training pair's sum computed with a call,    "47 + 85 <python> print ( 47 + 85 ) </python>
#                as plain text outside the template              <output> 132 </output> = 132 ."
#   dialogues    the template (with or without the tool         "... User: What is 3 + 5. Assistant: <think> 3 + 5
#                sentence) around one-digit sums, two-digit       </think> <answer> 8 </answer>"
#                differences, two-digit plus one-digit sums and   "... User: What is 85 - 47. Assistant: <think>
#                one-digit products; a seventh of all dialogues    85 - 47 <python> print ( 85 - 47 ) </python>
#                answered with a call: never a sum of two two-    <output> 38 </output> </think> <answer> 38 </answer>"
#                digit numbers
#
# So the tool model knows the call syntax and that the output is the total from documents outside the template,
# and has seen a call used in the template on another kind of question, as real base models have seen tool use in
# their pretraining data. It has never seen a two-digit sum's total stated, only computed by a program, nor a
# two-digit sum in the template. Asked one there, it mostly restates it and guesses; now and then it writes a
# call. RL has to discover that the call pays on this task, and to write it right. Its tokenizer writes numbers
# digit by digit (build_tokenizer), as real models' tokenizers do.

TOOLS_CORPUS_MIX = {"tool_notes": 0.5, "dialogues": 0.5}


def tool_note_document(rng: random.Random) -> str:
    """A training pair's sum computed with a call, in one of three phrasings (half of them the bare sum, then
    the call)."""
    a, b = pair_sums.sample_train_pair(rng)
    call = f"<python> print ( {a} + {b} ) </python> <output> {a + b} </output>"
    return rng.choices([f"{a} + {b} {call} = {a + b} .",
                        f"Let us add {a} and {b} . {call} So {a} + {b} = {a + b} .",
                        f"What is {a} + {b} ? {call} The total is {a + b} ."], [0.5, 0.25, 0.25])[0]


TOOL_DIALOGUE_STYLES = {"worked": 0.3, "restated": 0.35, "called": 0.2, "answer": 0.1, "bare": 0.05}


def small_dialogue_document(rng: random.Random) -> str:
    """The template, told half the time that Python may be run, around a question that is not the task: a sum of
    two one-digit numbers (answered as DIALOGUE_STYLES says), or a difference of two two-digit numbers, a two-digit
    number plus a one-digit one (either way round) or a product of two one-digit numbers (answered as
    TOOL_DIALOGUE_STYLES says: a fifth of them with a call). Never a sum of two two-digit numbers."""
    kind = rng.choices(["sum", "difference", "offset", "product"], [0.25, 0.25, 0.3, 0.2])[0]
    a, b = rng.randint(sums.MIN_DIGIT, sums.MAX_DIGIT), rng.randint(sums.MIN_DIGIT, sums.MAX_DIGIT)
    if kind == "sum":
        expression, value = f"{a} + {b}", a + b
    elif kind == "difference":
        a, b = sorted((rng.randint(pair_sums.LOW, pair_sums.HIGH), rng.randint(pair_sums.LOW, pair_sums.HIGH)),
                      reverse=True)
        expression, value = f"{a} - {b}", a - b
    elif kind == "offset":  # a two-digit number and a one-digit one, either way round
        a = rng.randint(pair_sums.LOW, pair_sums.HIGH)
        expression, value = (f"{a} + {b}" if rng.random() < 0.5 else f"{b} + {a}"), a + b
    else:
        expression, value = f"{a} * {b}", a * b
    styles = DIALOGUE_STYLES if kind == "sum" else TOOL_DIALOGUE_STYLES
    style = rng.choices(list(styles), list(styles.values()))[0]
    call = f"<python> print ( {expression} ) </python> <output> {value} </output>"
    reply = {"worked": f"<think> {expression} = {value} </think> <answer> {value} </answer>",
             "restated": f"<think> {expression} </think> <answer> {value} </answer>",
             "called": f"<think> {expression} {call} </think> <answer> {value} </answer>",
             "answer": f"<answer> {value} </answer>", "bare": f"{value} ."}[style]
    extra = tool_sentence() if rng.random() < 0.5 else ""
    return build_prompt(f"What is {expression}", extra_instruction=extra) + " " + reply


TOOLS_DOCUMENT_MAKERS = {"tool_notes": tool_note_document, "dialogues": small_dialogue_document}


def held_out_pairs_in(text: str) -> list[tuple[int, int]]:
    """Every held-out pair_sums pair written as a sum ("47 + 85") or an addition ("add 47 and 85")."""
    found = re.findall(r"(?<!\d)(\d{2}) \+ (\d{2})(?!\d)", text) + re.findall(r"add (\d{2}) and (\d{2})", text)
    return [pair for pair in ((int(a), int(b)) for a, b in found) if pair_sums.is_held_out(pair)]


# ---------------------------------------------------------------------------------------------
# Tokenizer: word level, every number up to the largest total is one token


def build_tokenizer(corpus: list[str], kind: str = "sums"):
    """The word-level tokenizer of a corpus: every word of it, the tags as whole tokens.

    "sums" (the built-in model): every number up to the task's largest total (plus a margin) is one token.
    "tools" (the tool model): numbers are written digit by digit, as real models' tokenizers do: WordPiece with
    the ten digits and their continuations ("132" is 1 ##3 ##2, decoded back to "132"), so copying a number, into a
    call or out of its output, is copying digits the model has seen everywhere; plus the tool markers and the
    tool sentence's words."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {UNK, EOS}
    splitter = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tags = THINK_TAGS if kind == "sums" else THINK_TAGS + TOOL_TAGS
    numbers = [str(n) for n in range(sums.MAX_DIGIT * sums.MAX_TERMS + 10)] if kind == "sums" else []
    extra = [] if kind == "sums" else [tool_sentence(), "(no output) (not run: at most calls per answer)"]
    for text in numbers + [R1_ZERO_TEMPLATE] + extra + corpus[:20000]:
        for tag in tags:
            text = text.replace(tag, " ")
        words.update(piece for piece, _ in splitter.pre_tokenize_str(text))
    if kind != "sums":  # digits and their continuations instead of whole numbers
        words = {word for word in words if not word.isdigit()} | set("0123456789") | {f"##{d}" for d in range(10)}
    vocab = {word: index for index, word in enumerate(sorted(words))}
    for tag in tags:
        vocab[tag] = len(vocab)
    if kind == "sums":
        tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    else:
        tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK))
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer.pre_tokenizer = splitter
    tokenizer.add_tokens([AddedToken(tag, normalized=False) for tag in tags])
    tokenizer.add_special_tokens([AddedToken(EOS, special=True), AddedToken(UNK, special=True)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS, unk_token=UNK)


# ---------------------------------------------------------------------------------------------
# Model and pretraining loop


@dataclass
class PretrainSettings:
    """Sizes and schedule of the built-in base model (the defaults made the shipped checkpoint)."""

    hidden_size: int = 128
    """Width of the Llama model; 128 with 4 layers is about 0.8M parameters."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads per block."""
    num_documents: int = 60000
    """Corpus size in documents (about 40 tokens each on average)."""
    block_size: int = 256
    """Tokens per packed training sequence."""
    batch_size: int = 32
    """Packed sequences per optimiser step."""
    steps: int = 1500
    """Optimiser steps (about 15 passes over the corpus)."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate, linear warm-up for 5% of the steps then cosine decay to 10%."""
    seed: int = 0
    """Seeds the corpus, the initialisation and the batch order."""
    corpus: str = "sums"
    """"sums": the built-in base model's corpus (model builtin); "tools": the tool model's (model builtin-tools,
    for the pair_sums task and --tools python)."""


# The tool model's schedule: its corpus is more repetitive (one call pattern), so half the documents and 600 steps.
TOOLS_SETTINGS = PretrainSettings(corpus="tools", num_documents=30000, steps=600)
SETTINGS = {"sums": PretrainSettings(), "tools": TOOLS_SETTINGS}  # `r1zero pretrain --corpus NAME`


def pretrain(output_dir: str | Path, settings: PretrainSettings = PretrainSettings(), log=print) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(settings.seed)
    corpus = build_corpus(settings.num_documents, settings.seed, settings.corpus)
    assert_no_held_out_problem(corpus)
    tokenizer = build_tokenizer(corpus, settings.corpus)
    ids: list[int] = []
    for document in corpus:
        ids.extend(tokenizer(document)["input_ids"] + [tokenizer.eos_token_id])
    if tokenizer.unk_token_id in ids:
        raise AssertionError("the tokenizer does not cover the corpus")
    blocks = torch.tensor(ids[: len(ids) // settings.block_size * settings.block_size]).view(-1, settings.block_size)
    log(f"corpus: {len(corpus)} documents, {len(ids)} tokens, {len(blocks)} blocks; vocabulary {len(tokenizer)}")

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.hidden_size * 3,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, settings.steps // 20)

    def learning_rate_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_at)
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    start = time.time()
    for step in range(settings.steps):
        batch = blocks[torch.randint(len(blocks), (settings.batch_size,), generator=generator)]  # (batch, block)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 100 == 0 or step == settings.steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:.0f}s")

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "pretrain_settings.json").write_text(json.dumps(settings.__dict__, indent=2) + "\n")
    return output_dir
