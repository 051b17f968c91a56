"""The sampling engine against plain `transformers.generate`, stopping rules, reproducibility."""

import torch
from transformers import AutoModelForCausalLM

from r1zero.models import load_tokenizer
from r1zero.rollout.transformers_engine import TransformersEngine
from r1zero.templates import build_prompt


def _setup(folder):
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, tokenizer, TransformersEngine(model, tokenizer)


def test_greedy_matches_transformers_generate_with_shared_prefill_and_dropped_rows(llama_dir):
    model, tokenizer, engine = _setup(llama_dir)
    questions = ["What is 3 + 4 + 5", "What is 1 + 2 + 9 + 9", "What is the largest of 3 8"]
    prompts = [tokenizer(build_prompt(q), add_special_tokens=False)["input_ids"] for q in questions]
    result = engine.generate(prompts, samples_per_prompt=2, max_new_tokens=12, temperature=0.0)
    assert len(result.completions) == 6
    stop_ids = sorted(engine.eos_ids | {engine.stop_token})
    for row, completion in enumerate(result.completions):
        prompt = prompts[row // 2]
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                  eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)[0, len(prompt):]
        assert completion == expected.tolist()[:len(completion)]
        assert len(completion) == 12 or completion[-1] in stop_ids


def test_rows_stop_at_answer_tag_or_eos_and_are_cut_at_the_limit(llama_dir):
    model, tokenizer, engine = _setup(llama_dir)
    stop = tokenizer.convert_tokens_to_ids("</answer>")
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # make the model always emit </answer> first: every row stops after one token
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
        model.lm_head.bias[stop] = 1e4
    result = engine.generate([[1, 2, 3]], samples_per_prompt=3, max_new_tokens=5, temperature=1.0)
    assert result.completions == [[stop]] * 3 and result.stopped == [True] * 3
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[eos] = 1e4
    assert engine.generate([[1, 2]], 1, 5, 1.0).completions == [[eos]]
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[tokenizer.convert_tokens_to_ids("7")] = 1e4
    cut = engine.generate([[1, 2]], 2, 4, 1.0)
    assert cut.completions == [[tokenizer.convert_tokens_to_ids("7")] * 4] * 2 and cut.stopped == [False, False]


def test_sampling_is_reproducible_with_a_seeded_generator(llama_dir):
    _, tokenizer, engine = _setup(llama_dir)
    prompts = [tokenizer(build_prompt("What is 2 + 2 + 2"), add_special_tokens=False)["input_ids"]]
    first = engine.generate(prompts, 4, 10, 1.0, torch.Generator().manual_seed(7)).completions
    again = engine.generate(prompts, 4, 10, 1.0, torch.Generator().manual_seed(7)).completions
    other = engine.generate(prompts, 4, 10, 1.0, torch.Generator().manual_seed(8)).completions
    assert first == again and first != other
