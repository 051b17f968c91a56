"""LoRA training (r1zero.models.load_policy): the adapter-free reference, the merged output, exact resume.

    python -m pytest tests/test_lora.py -q
"""

from __future__ import annotations

import torch
from conftest import read_metrics, tiny_run_config, without_timings
from transformers import AutoModelForCausalLM

from r1zero.models import full_sequence_logprobs
from r1zero.trainer import train


def test_lora_reference_is_the_base_model_and_output_is_merged(llama_dir, tmp_path, length_reward):
    from peft import PeftModel

    config = tiny_run_config(llama_dir, tmp_path, lora_rank=4, lora_alpha=8, kl_coef=0.05, max_steps=2, learning_rate=5e-2)
    output = train(config)
    steps = [r for r in read_metrics(output) if "reward/mean" in r]
    assert steps[-1]["kl"] > 0  # the adapters moved the policy away from the adapter-free reference

    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    merged = AutoModelForCausalLM.from_pretrained(output / "final")  # plain transformers
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), output / "final" / "adapter")
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        merged_lp = full_sequence_logprobs(merged, ids, mask, 2)
        adapted_lp = full_sequence_logprobs(adapted, ids, mask, 2)
        base_lp = full_sequence_logprobs(base, ids, mask, 2)
        with adapted.disable_adapter():  # what the trainer uses as the reference
            reference_lp = full_sequence_logprobs(adapted, ids, mask, 2)
    torch.testing.assert_close(merged_lp, adapted_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reference_lp, base_lp, atol=0, rtol=0)
    assert (merged_lp - base_lp).abs().max() > 1e-3  # training changed something
    # only adapter weights were trained: the merged model differs from the base only in adapted layers
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)


def test_lora_resume_repeats_the_uninterrupted_run(llama_dir, tmp_path, length_reward):
    settings = dict(lora_rank=4, checkpoint_every=1, eval_every=1, learning_rate=5e-2)
    whole = read_metrics(train(tiny_run_config(llama_dir, tmp_path / "a", max_steps=3, **settings)))
    train(tiny_run_config(llama_dir, tmp_path / "b", max_steps=2, **settings))
    resumed = read_metrics(train(tiny_run_config(llama_dir, tmp_path / "b", max_steps=3, **settings), resume=True))
    assert without_timings(resumed) == without_timings(whole)
