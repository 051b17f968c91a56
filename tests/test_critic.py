"""PPO with a critic (r1zero.critic): the value model, and PPO training runs with exact resume.

    python -m pytest tests/test_critic.py -q
"""

from __future__ import annotations

import pytest
import torch
from conftest import read_metrics, tiny_run_config, without_timings
from transformers import AutoModelForCausalLM

from r1zero.checkpoint import latest_checkpoint, load_checkpoint
from r1zero.critic import ValueModel
from r1zero.trainer import train
from r1zero.update import pack_rollout


def test_value_model_reads_the_state_before_each_token(llama_dir):
    """V(s_t) from the shared-prompt path equals the head applied to a plain forward pass over the whole
    sequence at the position before token t."""
    model = ValueModel.from_base(llama_dir, "float32", torch.device("cpu"))
    torch.nn.init.normal_(model.head.weight, std=0.5)  # zero-initialised heads would make every value 0
    rollout = pack_rollout([[3, 4, 5], [6, 7]], [[10, 11, 12], [13], [14, 15], [16, 17, 18]], 2, 0,
                           torch.zeros(4), torch.device("cpu"))
    values = model.completion_values(rollout)  # (4, 3)
    for row, (prompt, completion) in enumerate([([3, 4, 5], [10, 11, 12]), ([3, 4, 5], [13]),
                                                ([6, 7], [14, 15]), ([6, 7], [16, 17, 18])]):
        hidden = model.backbone(input_ids=torch.tensor([prompt + completion])).last_hidden_state[0]  # (L, H)
        expected = model.head(hidden).squeeze(-1)[len(prompt) - 1:len(prompt) - 1 + len(completion)]
        torch.testing.assert_close(values[row, :len(completion)], expected, atol=1e-5, rtol=1e-5)


def test_value_model_starts_at_zero_from_the_base_weights(llama_dir):
    model = ValueModel.from_base(llama_dir, "float32", torch.device("cpu"))
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    assert torch.equal(model.backbone.embed_tokens.weight, base.model.embed_tokens.weight)
    rollout = pack_rollout([[3, 4]], [[5, 6]], 1, 0, torch.zeros(1), torch.device("cpu"))
    assert model.completion_values(rollout).abs().max().item() == 0.0


@pytest.mark.parametrize("kl_penalty", ["reward", "loss"])
def test_ppo_trains_the_policy_and_the_critic(llama_dir, tmp_path, length_reward, kl_penalty):
    config = tiny_run_config(llama_dir, tmp_path, advantage="gae", kl_coef=0.05, kl_penalty=kl_penalty, max_steps=4,
                    critic_warmup_steps=1, critic_learning_rate=1e-2, updates_per_batch=2, minibatch_size=4)
    output = train(config)
    steps = [r for r in read_metrics(output) if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert steps[0]["grad_norm"] == 0.0 and steps[1]["grad_norm"] > 0  # warm-up: the critic alone, then both
    assert all(r["critic/grad_norm"] > 0 and r["critic/value_loss"] > 0 for r in steps)
    assert steps[0]["critic/value_mean"] == 0.0  # zero-initialised head
    assert steps[-1]["critic/value_mean"] != 0.0  # ... that has learned since
    assert steps[-1]["kl"] > 0
    state = load_checkpoint(latest_checkpoint(output))
    assert set(state.critic) == {"model", "optimizer"}


def test_ppo_resume_continues_the_critic_exactly(llama_dir, tmp_path, length_reward):
    # eval_every 1: the run stopped at step 2 evaluates there (a run's last step always does), so the one that
    # never stopped must too, or their sampling generators part
    settings = dict(advantage="gae", checkpoint_every=1, eval_every=1, critic_learning_rate=1e-2)
    whole = read_metrics(train(tiny_run_config(llama_dir, tmp_path / "a", max_steps=3, **settings)))
    train(tiny_run_config(llama_dir, tmp_path / "b", max_steps=2, **settings))
    resumed = read_metrics(train(tiny_run_config(llama_dir, tmp_path / "b", max_steps=3, **settings), resume=True))
    assert without_timings(resumed) == without_timings(whole)
