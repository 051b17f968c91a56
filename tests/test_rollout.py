"""The sampling engine against plain `transformers.generate`, stopping rules, reproducibility."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from r1zero.models import cache_keyword, load_tokenizer
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
    stop_ids = sorted(engine.eos_ids | {tokenizer.convert_tokens_to_ids("</answer>")})
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


def test_per_prompt_seeds_make_a_prompts_samples_independent_of_the_batch(llama_dir):
    # The property rollout workers rely on: prompt b's samples depend on seeds[b] only, not on its neighbours.
    _, tokenizer, engine = _setup(llama_dir)
    prompts = [tokenizer(build_prompt(q), add_special_tokens=False)["input_ids"]
               for q in ("What is 2 + 2 + 2", "What is 1 + 5 + 3 + 8", "What is 9 + 1")]
    together = engine.generate(prompts, 3, 10, 1.0, seeds=[11, 12, 13]).completions
    alone = [engine.generate([prompt], 3, 10, 1.0, seeds=[seed]).completions
             for prompt, seed in zip(prompts, (11, 12, 13))]
    assert together == alone[0] + alone[1] + alone[2]
    reordered = engine.generate(prompts[::-1], 3, 10, 1.0, seeds=[13, 12, 11]).completions
    assert reordered == alone[2] + alone[1] + alone[0]
    assert engine.generate(prompts[:1], 3, 10, 1.0, seeds=[99]).completions != alone[0]


def test_inverse_cdf_draws_follow_the_model_distribution(llama_dir):
    # 4000 single-token draws through the seeded path; the token frequencies must match softmax(logits) (a wrong
    # search side or scale would shift mass to a neighbouring token).
    model, tokenizer, engine = _setup(llama_dir)
    prompt = tokenizer(build_prompt("What is 2 + 2"), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.tensor([prompt])).logits[0, -1] / 0.05, dim=-1)  # peaked
    assert 0.1 < probabilities.max() < 0.9
    draws = engine.generate([prompt], 4000, 1, 0.05, seeds=[5]).completions
    counts = torch.bincount(torch.tensor([d[0] for d in draws]), minlength=len(probabilities)).float() / 4000
    assert (counts - probabilities).abs().max() < 0.03
    assert torch.sum(torch.minimum(counts, probabilities)) > 0.93  # overlap of the two distributions


@pytest.mark.parametrize("compute, tolerance", [(None, 1e-5), (torch.bfloat16, 2e-2)], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_fast_decode_steps_equal_the_models_own_forward(request, architecture, compute, tolerance):
    # Two prompts of different lengths (left padding), 2 samples each, 6 decode steps on fixed tokens, one row
    # leaving the batch after step 3 and all but one after step 4 (a whole group gone); the tiny models have 4
    # query heads over 2 key/value heads (GQA), and Qwen2 adds q/k/v biases. Every step's logits must match
    # transformers' forward with its DynamicCache; under bfloat16 autocast (--dtype bfloat16 samples so), to
    # bfloat16's rounding: the two paths round different intermediate tensors (8 bits of mantissa: about 1e-2).
    from transformers import DynamicCache

    from r1zero.models import autocast
    from r1zero.rollout import fast_decode

    folder = request.getfixturevalue(f"{architecture}_dir")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert fast_decode.supports(model)
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    mask[1] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), autocast(model, compute):
        caches = [DynamicCache(), DynamicCache()]
        for cache in caches:
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                  **{cache_keyword(model): cache})
        decoder = fast_decode.FastDecoder(model, caches[0], mask, 2, 6)
        reference = caches[1]
        reference.batch_repeat_interleave(2)
        full_mask = mask.repeat_interleave(2, dim=0)
        position = positions[:, -1:].repeat_interleave(2, dim=0) + 1
        tokens = [torch.tensor(row) for row in ([13, 14, 15, 16], [17, 18, 19, 20], [21, 22, 23, 24],
                                                [25, 26, 27, 28], [29, 30, 31], [32, 33, 34])]  # row 2 leaves at 4
        for step in range(6):
            keep = {4: torch.tensor([0, 1, 3]), 5: torch.tensor([2])}.get(step)  # at 5 prompt 0's group is gone
            if keep is not None:
                decoder.select_rows(keep)
                reference.batch_select_indices(keep)
                full_mask, position = full_mask[keep], position[keep]
            token = tokens[step] if step < 5 else tokens[step][2:]
            full_mask = torch.cat([full_mask, torch.ones_like(full_mask[:, :1])], dim=1)
            expected = model(input_ids=token[:, None], attention_mask=full_mask, position_ids=position,
                             use_cache=True, **{cache_keyword(model): reference}).logits[:, -1]
            torch.testing.assert_close(decoder.step(token, position).float(), expected.float(), atol=tolerance,
                                       rtol=tolerance)
            position = position + 1


def test_fast_decode_samples_what_the_plain_path_samples(qwen2_dir):
    model = AutoModelForCausalLM.from_pretrained(qwen2_dir).eval()
    tokenizer = load_tokenizer(qwen2_dir)
    prompts = [tokenizer(build_prompt(q), add_special_tokens=False)["input_ids"]
               for q in ("What is 2 + 2 + 2", "What is 1 + 5")]
    fast = TransformersEngine(model, tokenizer).generate(prompts, 4, 12, 1.0, seeds=[3, 4])
    plain = TransformersEngine(model, tokenizer, fast_decode=False).generate(prompts, 4, 12, 1.0, seeds=[3, 4])
    assert fast == plain


@pytest.mark.parametrize("dtype, products", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_the_rollout_engines_multiply_in_the_runs_compute_dtype(llama_dir, dtype, products):
    # --dtype bfloat16 trains with float32 weights and bfloat16 products; the engine in the training process and
    # a Ray rollout worker's must sample the same way, or rollouts and training disagree more than they need to
    from r1zero.config import TrainConfig
    from r1zero.distributed import RolloutWorker
    from r1zero.models import PRECISIONS, load_model
    from r1zero.trainer import start_engines

    tokenizer = load_tokenizer(llama_dir)
    model = load_model(llama_dir, PRECISIONS[dtype].parameters, torch.device("cpu"), trainable=False)
    engine, eval_engine = start_engines(TrainConfig(model=str(llama_dir), dtype=dtype), model, tokenizer,
                                        torch.device("cpu"), None, 1)
    worker = RolloutWorker(model.config, model.generation_config, tokenizer, model.dtype, 1, "cpu", None,
                           PRECISIONS[dtype].compute)
    for each in (engine, worker.engine):
        seen = set()
        layer = each.model.model.layers[0].mlp.down_proj
        handle = layer.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
        each.generate([[3, 4, 5], [6, 7]], 2, 4, 1.0, torch.Generator().manual_seed(0))
        handle.remove()
        assert seen == {products}
        assert next(each.model.parameters()).dtype == torch.float32  # the weights stay float32
    assert eval_engine is engine


def test_every_engine_declares_the_whole_interface(llama_dir):
    # the trainer calls require_version, load_weights (when holds_weights) and close on any engine, never asking
    # whether it has them: r1zero's engine answers with no-ops, vLLM's (not importable here) defines them all
    from r1zero.rollout import RolloutEngine
    from r1zero.rollout.vllm_engine import VLLMEngine

    model, tokenizer, engine = _setup(llama_dir)
    assert isinstance(engine, RolloutEngine)
    assert engine.holds_weights is False and engine.load_seconds == 0.0 and engine.pad_id == tokenizer.pad_token_id
    before = [p.clone() for p in model.parameters()]
    engine.load_weights({name: torch.zeros_like(p) for name, p in model.named_parameters()}, 7)
    engine.require_version(123)
    engine.close()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing was loaded
    declared = {name for name in dir(RolloutEngine) if not name.startswith("_")}
    assert declared >= {"generate", "load_weights", "require_version", "close"}
    assert declared <= set(dir(VLLMEngine)) | {"pad_id", "holds_weights", "load_seconds"}
    source = Path(VLLMEngine.__init__.__code__.co_filename).read_text()
    assert all(f"self.{name} = " in source for name in ("pad_id", "holds_weights", "load_seconds"))


@pytest.mark.parametrize("fast", [True, False])
def test_the_engine_can_return_each_sampled_tokens_logprob_under_the_weights_it_sampled_with(llama_dir, fast):
    # the behaviour policy's own numbers (for training on older weights' samples): they equal the trainer's
    # log-probabilities of the same tokens, in the fast decode path and in transformers' forward
    from r1zero.update import pack_sequences, score_logprobs

    model, tokenizer, _ = _setup(llama_dir)
    engine = TransformersEngine(model, tokenizer, fast_decode=fast, logprobs=True)
    prompts = [tokenizer(build_prompt(q), add_special_tokens=False)["input_ids"]
               for q in ("What is 3 + 4 + 5", "What is 1 + 2")]
    result = engine.generate(prompts, 3, 10, 1.0, seeds=[4, 5])
    assert [len(values) for values in result.logprobs] == [len(c) for c in result.completions]
    sequences = pack_sequences(prompts, result.completions, 3, engine.pad_id, "cpu")
    trainer = score_logprobs(model, sequences, 6)  # (N, T)
    for row, values in enumerate(result.logprobs):
        torch.testing.assert_close(torch.tensor(values), trainer[row, :len(values)], atol=1e-5, rtol=0)
    assert TransformersEngine(model, tokenizer).generate(prompts, 3, 10, 1.0, seeds=[4, 5]).logprobs is None
