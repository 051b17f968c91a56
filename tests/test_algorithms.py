"""Tests for r1zero.algorithms: hand-computed examples, slow loop references, invariances.

    python -m pytest tests/test_algorithms.py -q
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from r1zero.algorithms import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    ROLLOUT_CORRECTION_LEVELS,
    ROLLOUT_CORRECTIONS,
    PolicyLoss,
    clipped_surrogate_loss,
    cispo_loss,
    clipped_value_loss,
    constant_weights,
    dr_grpo_advantages,
    effective_sample_size,
    engine_ratio,
    entropy_from_logits,
    gae,
    grpo_advantages,
    gspo_loss,
    informative_groups,
    kl_k1,
    kl_k2,
    kl_k3,
    logprob_mismatch,
    lookup,
    masked_mean,
    outcome_token_rewards,
    overlong_penalty,
    pass_at_k,
    reinforce_advantages,
    rloo_advantages,
    sequence_weights,
    token_logprobs,
    token_weights,
    whiten,
)

F64 = torch.float64


def random_mask(num_sequences: int, num_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """Right-padded (N, T) mask with random lengths in [0, T], the first row always empty."""
    lengths = torch.randint(0, num_tokens + 1, (num_sequences,), generator=generator)
    lengths[0] = 0
    return (torch.arange(num_tokens)[None, :] < lengths[:, None]).to(F64)  # (N, T)


# ----------------------------------------------------------------------------- slow loop references


def reference_advantages(rewards: list[list[float]], name: str, eps: float) -> list[list[float]]:
    """Plain-Python advantages, one group (or, for reinforce, the whole batch) at a time."""
    everything = [r for group in rewards for r in group]
    batch_mean = sum(everything) / len(everything)
    out = []
    for group in rewards:
        size = len(group)
        mean = sum(group) / size
        row = []
        for i, r in enumerate(group):
            if name == "grpo":
                std = math.sqrt(sum((x - mean) ** 2 for x in group) / (size - 1))
                row.append((r - mean) / (std + eps))
            elif name == "dr_grpo":
                row.append(r - mean)
            elif name == "rloo":
                others = [x for j, x in enumerate(group) if j != i]
                row.append(r - sum(others) / len(others))
            else:
                row.append(r - batch_mean)
        out.append(row)
    return out


def reference_token_logprobs_and_entropy(logits, tokens):
    """Loops over sequences and tokens, log-softmax by hand with math.exp/math.log."""
    logprobs, entropies = [], []
    for n in range(len(logits)):
        logprob_row, entropy_row = [], []
        for t in range(len(logits[n])):
            z = logits[n][t]
            top = max(z)
            log_normaliser = top + math.log(sum(math.exp(v - top) for v in z))
            logprob_row.append(z[tokens[n][t]] - log_normaliser)
            entropy_row.append(-sum(math.exp(v - log_normaliser) * (v - log_normaliser) for v in z))
        logprobs.append(logprob_row)
        entropies.append(entropy_row)
    return logprobs, entropies


def reference_surrogate(logprobs, old_logprobs, advantages, clip_low, clip_high):
    """Per-token PPO loss and clip flag with math.exp, min and an explicit clamp."""
    losses, clipped_flags = [], []
    for n in range(len(logprobs)):
        loss_row, flag_row = [], []
        for t in range(len(logprobs[n])):
            ratio = math.exp(logprobs[n][t] - old_logprobs[n][t])
            clamped = min(max(ratio, 1 - clip_low), 1 + clip_high)
            unclipped, clipped = ratio * advantages[n], clamped * advantages[n]
            loss_row.append(-min(unclipped, clipped))
            flag_row.append(clipped < unclipped)
        losses.append(loss_row)
        clipped_flags.append(flag_row)
    return losses, clipped_flags


def reference_kl(logprobs, ref_logprobs, name):
    out = []
    for n in range(len(logprobs)):
        row = []
        for t in range(len(logprobs[n])):
            ratio = math.exp(ref_logprobs[n][t]) / math.exp(logprobs[n][t])  # pi_ref / pi
            if name == "k1":
                row.append(-math.log(ratio))
            elif name == "k2":
                row.append(0.5 * math.log(ratio) ** 2)
            else:
                row.append(ratio - math.log(ratio) - 1)
        out.append(row)
    return out


def reference_weights(mask, name, max_length):
    num_sequences = len(mask)
    total_tokens = sum(sum(row) for row in mask)
    out = []
    for row in mask:
        length = sum(row)
        weights = []
        for m in row:
            if name == "sequence":
                weights.append(m / length / num_sequences if length > 0 else 0.0)
            elif name == "token":
                weights.append(m / total_tokens if total_tokens > 0 else 0.0)
            else:
                weights.append(m / (max_length * num_sequences))
        out.append(weights)
    return out


# ----------------------------------------------------------------------------- advantages


def test_grpo_hand_computed():
    # group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = sqrt(1/3) = 0.5774 -> +-0.8660
    # group [2, 0, 0, 0]: mean 0.5, unbiased std sqrt((2.25 + 3 * 0.25) / 3) = 1 -> [1.5, -0.5, -0.5, -0.5]
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0]], dtype=F64)
    expected = torch.tensor(
        [[0.8660254, -0.8660254, -0.8660254, 0.8660254], [1.5, -0.5, -0.5, -0.5]], dtype=F64
    )
    assert_close(grpo_advantages(rewards, eps=0.0), expected)
    # eps 0.1 on the first group: 0.5 / (0.5774 + 0.1) = 0.7382
    assert grpo_advantages(rewards, eps=0.1)[0, 0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 0.1))


def test_dr_grpo_rloo_reinforce_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0]], dtype=F64)
    # Dr. GRPO: r - group mean, means 0.5 and 0.5
    expected_dr_grpo = torch.tensor([[0.5, -0.5, -0.5, 0.5], [1.5, -0.5, -0.5, -0.5]], dtype=F64)
    assert_close(dr_grpo_advantages(rewards, 1e-6), expected_dr_grpo)
    # RLOO, group [1, 0, 0, 1]: r=1 minus mean of others (0+0+1)/3 = 2/3; r=0 minus (1+0+1)/3 -> -2/3
    # group [2, 0, 0, 0]: 2 - 0 = 2; 0 - 2/3 = -2/3   (= 4/3 * (r - 0.5) in both groups)
    expected_rloo = torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [2.0, -2 / 3, -2 / 3, -2 / 3]], dtype=F64)
    assert_close(rloo_advantages(rewards, 1e-6), expected_rloo)
    # REINFORCE: batch mean (1+0+0+1+2+0+0+0)/8 = 0.5
    assert_close(reinforce_advantages(rewards, 1e-6), rewards - 0.5)
    # REINFORCE ignores groups: rewards [[1, 0], [1, 1]] have batch mean 0.75
    assert_close(
        reinforce_advantages(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), 1e-6),
        torch.tensor([[0.25, -0.75], [0.25, 0.25]]),
    )


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_advantages_match_loop_reference(name):
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(5, 6, generator=generator, dtype=F64)  # (B, G)
    estimator = lookup(ADVANTAGE_ESTIMATORS, name, "advantage estimator")
    expected = torch.tensor(reference_advantages(rewards.tolist(), name, eps=1e-4), dtype=F64)
    assert_close(estimator(rewards, 1e-4), expected)


def test_rloo_equals_scaled_group_centred_rewards():
    # G / (G - 1) * (r - mean), with G = 6
    rewards = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert_close(rloo_advantages(rewards, 0.0), 6 / 5 * (rewards - rewards.mean(dim=1, keepdim=True)))


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
@pytest.mark.parametrize("value", [0.0, 1.0, 0.9, 0.1])
def test_equal_reward_group_gets_exactly_zero(name, value):
    # float32 mean of [0.9] * 3 or [0.1] * 7 is off by one ulp; GRPO's std division would amplify it
    for group_size in (3, 7):
        rewards = torch.full((2, group_size), value)  # (B, G), every group (and the batch) equal
        advantages = ADVANTAGE_ESTIMATORS[name](rewards, 1e-6)
        assert torch.equal(advantages, torch.zeros_like(rewards)), advantages


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_equal_group_is_zero_while_other_groups_are_not(name):
    rewards = torch.tensor([[0.9, 0.9, 0.9], [1.0, 0.0, 0.0]])  # group 0 all equal
    advantages = ADVANTAGE_ESTIMATORS[name](rewards, 1e-6)
    assert torch.equal(advantages[0], torch.zeros(3))
    assert not torch.isnan(advantages).any()
    assert advantages[1, 0] > 0 > advantages[1, 1]


def test_group_size_errors():
    with pytest.raises(ValueError, match="at least 2 samples per prompt"):
        grpo_advantages(torch.ones(3, 1), 1e-6)
    with pytest.raises(ValueError, match="at least 2 samples per prompt"):
        rloo_advantages(torch.ones(3, 1), 1e-6)
    with pytest.raises(ValueError, match=r"shape \(B, G\)"):
        grpo_advantages(torch.ones(6), 1e-6)
    # G == 1 is fine where no spread is needed: the only sample is its own group mean
    assert torch.equal(dr_grpo_advantages(torch.tensor([[3.0], [1.0]]), 1e-6), torch.zeros(2, 1))
    assert_close(reinforce_advantages(torch.tensor([[3.0], [1.0]]), 1e-6), torch.tensor([[1.0], [-1.0]]))


def test_integer_rewards_are_accepted():
    # [1, 0]: mean 0.5, unbiased std sqrt(0.5) = 0.7071 -> +-0.7071
    advantages = grpo_advantages(torch.tensor([[1, 0]]), 0.0)
    assert advantages.dtype == torch.float32
    assert_close(advantages, torch.tensor([[0.70710677, -0.70710677]]))


# ----------------------------------------------------------------------------- log-probabilities, entropy


def test_token_logprobs_and_entropy_hand_computed():
    # logits [ln 1, ln 2, ln 3] -> softmax [1/6, 2/6, 3/6]; token 2 -> log(1/2) = -0.6931
    # entropy -(1/6 ln 1/6 + 1/3 ln 1/3 + 1/2 ln 1/2) = 1.0114; uniform over 3 -> ln 3 = 1.0986
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)], [5.0, 5.0, 5.0]]])  # (1, 2, 3)
    tokens = torch.tensor([[2, 0]])  # (1, 2)
    assert_close(token_logprobs(logits, tokens), torch.tensor([[math.log(0.5), math.log(1 / 3)]]))
    expected_entropy = -(1 / 6 * math.log(1 / 6) + 1 / 3 * math.log(1 / 3) + 1 / 2 * math.log(1 / 2))
    assert_close(entropy_from_logits(logits), torch.tensor([[expected_entropy, math.log(3)]]))


def test_token_logprobs_and_entropy_match_loop_reference():
    generator = torch.Generator().manual_seed(2)
    logits = 3 * torch.randn(3, 4, 7, generator=generator, dtype=F64)  # (N, T, V)
    tokens = torch.randint(0, 7, (3, 4), generator=generator)  # (N, T)
    expected_logprobs, expected_entropy = reference_token_logprobs_and_entropy(
        logits.tolist(), tokens.tolist()
    )
    assert_close(token_logprobs(logits, tokens), torch.tensor(expected_logprobs, dtype=F64))
    assert_close(entropy_from_logits(logits), torch.tensor(expected_entropy, dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_token_logprobs_and_entropy_agree_with_log_softmax(dtype):
    generator = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(4, 5, 50, generator=generator)).to(dtype)  # (N, T, V)
    tokens = torch.randint(0, 50, (4, 5), generator=generator)  # (N, T)
    log_softmax = torch.log_softmax(logits.float(), dim=-1)  # (N, T, V), computed in float32
    logprobs, entropy = token_logprobs(logits, tokens), entropy_from_logits(logits)
    assert logprobs.dtype == torch.float32 and entropy.dtype == torch.float32
    assert_close(logprobs, log_softmax.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
    assert_close(entropy, -(log_softmax.exp() * log_softmax).sum(-1))


def test_token_logprobs_and_entropy_stay_finite_for_extreme_logits():
    # logits [1e4, -1e4, 0]: softmax is one-hot on token 0 -> log p(0) = 0, log p(1) = -2e4, entropy 0
    logits = torch.tensor([[[1e4, -1e4, 0.0], [1e4, -1e4, 0.0]]])  # (1, 2, 3)
    assert_close(token_logprobs(logits, torch.tensor([[0, 1]])), torch.tensor([[0.0, -2e4]]))
    assert_close(entropy_from_logits(logits), torch.zeros(1, 2))


def test_masked_mean():
    # real tokens 1, 2 and 4 -> 7/3; padding values 3, 5, 6 are ignored
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(7 / 3)
    assert masked_mean(values, torch.zeros(2, 3)).item() == 0.0  # no tokens: 0, not NaN
    generator = torch.Generator().manual_seed(4)
    values, mask = torch.randn(5, 6, generator=generator, dtype=F64), random_mask(5, 6, generator)
    pairs = [(v, m) for vr, mr in zip(values.tolist(), mask.tolist()) for v, m in zip(vr, mr)]
    slow = sum(v * m for v, m in pairs) / sum(m for _, m in pairs)
    assert masked_mean(values, mask).item() == pytest.approx(slow)


# ----------------------------------------------------------------------------- policy loss


def surrogate_for_ratios(ratios, advantages, clip_low, clip_high) -> PolicyLoss:
    """One sequence, one token per ratio, old log-probabilities 0 so that exp(logprobs) = ratio."""
    logprobs = torch.tensor([[math.log(r) for r in ratios]], dtype=F64, requires_grad=True)  # (1, T)
    old_logprobs = torch.zeros_like(logprobs)  # (1, T)
    advantages = torch.tensor([advantages], dtype=F64)  # (1,)
    result = clipped_surrogate_loss(logprobs, old_logprobs, advantages, clip_low, clip_high)
    result.per_token_loss.sum().backward()
    return result, logprobs.grad


def test_clipped_surrogate_symmetric_clip_hand_computed():
    # clip 0.2 both sides, range [0.8, 1.2]; the loss is -min(ratio * A, clip(ratio) * A)
    # ratio 1.5, A=+1: clipped 1.2 < unclipped 1.5 -> loss -1.2, is_clipped, gradient 0
    # ratio 0.5, A=+1: clipped 0.8 > unclipped 0.5 -> loss -0.5, not clipped, d/dlogp = -A * ratio = -0.5
    # ratio 0.5, A=-1: clipped -0.8 < unclipped -0.5 -> loss 0.8, is_clipped, gradient 0
    # ratio 1.5, A=-1: clipped -1.2 > unclipped -1.5 -> loss 1.5, not clipped, gradient -A * ratio = 1.5
    # ratio 1.1, A=+1: inside the range -> loss -1.1, not clipped, gradient -1.1
    # ratio 3.0, A=0: both terms 0 -> loss 0, not clipped
    for ratio, advantage, loss, clipped, gradient in [
        (1.5, 1.0, -1.2, True, 0.0),
        (0.5, 1.0, -0.5, False, -0.5),
        (0.5, -1.0, 0.8, True, 0.0),
        (1.5, -1.0, 1.5, False, 1.5),
        (1.1, 1.0, -1.1, False, -1.1),
        (3.0, 0.0, 0.0, False, 0.0),
    ]:
        result, grad = surrogate_for_ratios([ratio], advantage, clip_low=0.2, clip_high=0.2)
        assert result.per_token_loss.item() == pytest.approx(loss), (ratio, advantage)
        assert result.ratio.item() == pytest.approx(ratio)
        assert result.is_clipped.item() is clipped, (ratio, advantage)
        assert grad.item() == pytest.approx(gradient, abs=1e-12), (ratio, advantage)


def test_clipped_surrogate_asymmetric_clip_higher():
    # DAPO clip-higher: clip_low 0.2, clip_high 0.28, range [0.8, 1.28]
    # ratio 1.25, A=+1: inside (would be clipped to 1.2 by symmetric 0.2) -> loss -1.25, not clipped
    # ratio 1.30, A=+1: clipped term 1.28 < 1.30 -> loss -1.28, is_clipped
    # ratio 0.75, A=-1: clipped term -0.8 < -0.75 -> loss 0.8, is_clipped
    # ratio 0.85, A=-1: inside -> loss 0.85, not clipped
    # ratio 1.30, A=-1: clipped term -1.28 > -1.30 -> loss 1.30, not clipped (upper clip binds only for A > 0)
    for ratio, advantage, loss, clipped in [
        (1.25, 1.0, -1.25, False),
        (1.30, 1.0, -1.28, True),
        (0.75, -1.0, 0.8, True),
        (0.85, -1.0, 0.85, False),
        (1.30, -1.0, 1.30, False),
    ]:
        result, _ = surrogate_for_ratios([ratio], advantage, clip_low=0.2, clip_high=0.28)
        assert result.per_token_loss.item() == pytest.approx(loss), (ratio, advantage)
        assert result.is_clipped.item() is clipped, (ratio, advantage)


def test_clipped_surrogate_matches_loop_reference_and_broadcasts():
    generator = torch.Generator().manual_seed(5)
    logprobs = -torch.rand(6, 5, generator=generator, dtype=F64) * 3  # (N, T)
    old_logprobs = logprobs + 0.4 * torch.randn(6, 5, generator=generator, dtype=F64)  # ratios ~ e^(+-0.4)
    advantages = torch.randn(6, generator=generator, dtype=F64)  # (N,)
    result = clipped_surrogate_loss(logprobs, old_logprobs, advantages, 0.2, 0.28)
    losses, flags = reference_surrogate(
        logprobs.tolist(), old_logprobs.tolist(), advantages.tolist(), clip_low=0.2, clip_high=0.28
    )
    assert_close(result.per_token_loss, torch.tensor(losses, dtype=F64))
    assert torch.equal(result.is_clipped, torch.tensor(flags))
    assert 0 < result.is_clipped.sum() < result.is_clipped.numel()  # both kinds of token present
    per_token = clipped_surrogate_loss(logprobs, old_logprobs, advantages[:, None].expand(6, 5), 0.2, 0.28)
    assert_close(per_token.per_token_loss, result.per_token_loss)


def test_clip_range_validation():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="clip_low"):
        clipped_surrogate_loss(x, x, torch.ones(1), 1.0, 0.2)
    with pytest.raises(ValueError, match="clip_high"):
        clipped_surrogate_loss(x, x, torch.ones(1), 0.2, -0.1)


# ----------------------------------------------------------------------------- the POLICY_LOSSES registry


def test_policy_loss_registry_names_and_ppo_clip_is_the_clipped_surrogate():
    assert set(POLICY_LOSSES) == {"ppo_clip", "gspo", "cispo"}
    with pytest.raises(ValueError, match="valid: cispo, gspo, ppo_clip"):
        lookup(POLICY_LOSSES, "grpo_clip", "policy loss")
    generator = torch.Generator().manual_seed(3)
    logprobs = -torch.rand(4, 3, generator=generator, dtype=F64)
    old_logprobs = logprobs + 0.3 * torch.randn(4, 3, generator=generator, dtype=F64)
    advantages = torch.randn(4, generator=generator, dtype=F64)
    mask = torch.ones(4, 3, dtype=F64)
    registered = POLICY_LOSSES["ppo_clip"](logprobs, old_logprobs, advantages, mask, 0.2, 0.28)
    direct = clipped_surrogate_loss(logprobs, old_logprobs, advantages, 0.2, 0.28)
    assert torch.equal(registered.per_token_loss, direct.per_token_loss)
    assert torch.equal(registered.is_clipped, direct.is_clipped)


def test_gspo_hand_computed_sequence_ratio_and_clip():
    # Response 0: 2 tokens with log-ratios 0.2 and -0.1 (a third column is padding), mean 0.05, s = e^0.05 = 1.051271.
    # Response 1: 3 tokens with log-ratios 0.001, -0.002, 0.0004, mean -0.0002, s = e^-0.0002 = 0.99980002.
    # The paper's clip: 1 - 3e-4 = 0.9997 below, 1 + 4e-4 = 1.0004 above.
    # A_0 = +1: clipped term 1.0004 < 1.051271 -> loss -1.0004 on both tokens, clipped (no gradient).
    # A_1 = -2: s_1 inside the range -> loss -s * A = 1.99960004 on each of its tokens, not clipped.
    log_ratios = torch.tensor([[0.2, -0.1, 5.0], [0.001, -0.002, 0.0004]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    old_logprobs = -torch.ones(2, 3, dtype=F64)
    result = gspo_loss(old_logprobs + log_ratios, old_logprobs, torch.tensor([1.0, -2.0], dtype=F64), mask,
                       3e-4, 4e-4)
    assert_close(result.ratio[0, :2], torch.full((2,), math.exp(0.05), dtype=F64))  # padding does not count
    assert_close(result.ratio[1], torch.full((3,), math.exp(-0.0002), dtype=F64))
    assert_close(result.per_token_loss[0, :2], torch.full((2,), -1.0004, dtype=F64))
    assert_close(result.per_token_loss[1], torch.full((3,), 2 * math.exp(-0.0002), dtype=F64))
    assert result.is_clipped[0, :2].all() and not result.is_clipped[1].any()
    # the same response clipped from below with A < 0: s = e^-0.01 = 0.99005 < 0.9997 -> loss -(0.9997 * -1)
    low = gspo_loss(torch.tensor([[-0.01]], dtype=F64), torch.zeros(1, 1, dtype=F64), -torch.ones(1, dtype=F64),
                    torch.ones(1, 1, dtype=F64), 3e-4, 4e-4)
    assert low.per_token_loss.item() == pytest.approx(0.9997) and low.is_clipped.item()


def reference_gspo_objective(logprobs, old_logprobs, advantages, mask, clip_low, clip_high):
    """GSPO exactly as the paper writes it, loop by loop: the mean over responses of
    -min(s_i A_i, clip(s_i) A_i), s_i = exp(mean over the response's tokens of log pi - log pi_old)."""
    total = 0.0
    for i in range(logprobs.shape[0]):
        tokens = [t for t in range(logprobs.shape[1]) if mask[i, t] > 0]
        s = torch.exp(sum(logprobs[i, t] - old_logprobs[i, t] for t in tokens) / len(tokens))
        clipped = torch.clamp(s, 1 - clip_low, 1 + clip_high)
        total = total - torch.minimum(s * advantages[i], clipped * advantages[i])
    return total / logprobs.shape[0]


def test_gspo_gradient_is_the_papers_expression():
    # GSPO (arXiv 2507.18071, eq. 10): grad J = (1/N) sum_i s_i A_i (1/|o_i|) sum_t grad log pi(o_it) over responses
    # whose clip is inactive. With the log-probabilities as the leaves, d loss / d log pi(o_it) = -s_i A_i / (N |o_i|)
    # there, and 0 on clipped responses and on padding. The token-level form with the "sequence" aggregation must
    # give that, and so must the plain sequence-level objective written loop by loop.
    generator = torch.Generator().manual_seed(11)
    old_logprobs = -torch.rand(5, 4, generator=generator, dtype=F64) * 2
    logprobs = (old_logprobs + 0.02 * torch.randn(5, 4, generator=generator, dtype=F64)).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=F64)
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.7], dtype=F64)
    result = gspo_loss(logprobs, old_logprobs, advantages, mask, 3e-3, 4e-3)
    (result.per_token_loss * sequence_weights(mask, 4)).sum().backward()
    lengths = mask.sum(dim=1)
    s = torch.exp(((logprobs - old_logprobs) * mask).sum(dim=1) / lengths).detach()
    active = ~result.is_clipped[:, 0]
    expected = (-s * advantages / (5 * lengths) * active)[:, None] * mask  # (N, T)
    assert 0 < active.sum() < 5  # both kinds of response present
    assert_close(logprobs.grad, expected)
    token_level_gradient = logprobs.grad.clone()
    logprobs.grad = None
    reference_gspo_objective(logprobs, old_logprobs, advantages, mask, 3e-3, 4e-3).backward()
    assert_close(logprobs.grad, token_level_gradient)


def test_cispo_hand_computed_keeps_the_gradient_ppo_drops():
    # Ratios 1.5 (A = +1), 0.5 (A = -1), 1.1 (A = +1); CISPO with no lower bound (clip_low 1) and clip_high 0.28:
    #   weights sg(clip(r, 0, 1.28)) = 1.28, 0.5, 1.1; loss -w * A * log pi; d loss / d log pi = -w * A
    #   = -1.28, +0.5, -1.1, and the first token is marked as truncated (1.5 -> 1.28).
    # PPO's clip 0.2 / 0.28 on the same tokens: 1.5 with A > 0 and 0.5 with A < 0 are clipped, gradient 0;
    #   1.1 is inside: -r * A = -1.1.
    ratios, advantages = [1.5, 0.5, 1.1], torch.tensor([[1.0, -1.0, 1.0]], dtype=F64)
    logprobs = torch.tensor([[math.log(r) for r in ratios]], dtype=F64, requires_grad=True)
    old_logprobs, mask = torch.zeros(1, 3, dtype=F64), torch.ones(1, 3, dtype=F64)
    cispo = cispo_loss(logprobs, old_logprobs, advantages, mask, 1.0, 0.28)
    cispo.per_token_loss.sum().backward()
    assert_close(logprobs.grad, torch.tensor([[-1.28, 0.5, -1.1]], dtype=F64))
    assert_close(cispo.per_token_loss.detach(),
                 torch.tensor([[-1.28 * math.log(1.5), 0.5 * math.log(0.5), -1.1 * math.log(1.1)]], dtype=F64))
    assert cispo.is_clipped.tolist() == [[True, False, False]]
    logprobs.grad = None
    ppo = clipped_surrogate_loss(logprobs, old_logprobs, advantages, 0.2, 0.28)
    ppo.per_token_loss.sum().backward()
    assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, -1.1]], dtype=F64))
    assert ppo.is_clipped.tolist() == [[True, True, False]]
    # a lower bound (clip_low 0.2) truncates the 0.5 to 0.8: gradient +0.8 there, still not 0
    logprobs.grad = None
    cispo_loss(logprobs, old_logprobs, advantages, mask, 0.2, 0.28).per_token_loss.sum().backward()
    assert_close(logprobs.grad, torch.tensor([[-1.28, 0.8, -1.1]], dtype=F64))
    with pytest.raises(ValueError, match="clip_low <= 1"):
        cispo_loss(logprobs, old_logprobs, advantages, mask, 1.5, 0.28)


def test_cispo_and_gspo_match_loop_references():
    generator = torch.Generator().manual_seed(7)
    logprobs = -torch.rand(6, 5, generator=generator, dtype=F64) * 3
    old_logprobs = logprobs + 0.4 * torch.randn(6, 5, generator=generator, dtype=F64)
    advantages = torch.randn(6, generator=generator, dtype=F64)
    mask = (torch.rand(6, 5, generator=generator) > 0.3).to(F64)
    mask[:, 0] = 1.0  # every response has a token
    cispo = cispo_loss(logprobs, old_logprobs, advantages, mask, 0.2, 0.28)
    gspo = gspo_loss(logprobs, old_logprobs, advantages, mask, 0.05, 0.08)
    for i in range(6):
        tokens = [t for t in range(5) if mask[i, t] > 0]
        s = math.exp(sum(logprobs[i, t].item() - old_logprobs[i, t].item() for t in tokens) / len(tokens))
        a = advantages[i].item()
        gspo_expected = -min(s * a, min(max(s, 0.95), 1.08) * a)
        for t in range(5):
            r = math.exp(logprobs[i, t].item() - old_logprobs[i, t].item())
            weight = min(max(r, 0.8), 1.28)
            assert cispo.per_token_loss[i, t].item() == pytest.approx(-weight * a * logprobs[i, t].item())
            assert cispo.is_clipped[i, t].item() is (weight != r)
            if t in tokens:
                assert gspo.per_token_loss[i, t].item() == pytest.approx(gspo_expected)
                assert gspo.ratio[i, t].item() == pytest.approx(s)


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_computed():
    # pi = 0.5, pi_ref = 0.25: log-ratio log(pi / pi_ref) = ln 2 = 0.6931
    # k1 = ln 2; k2 = 0.5 * ln(2)^2 = 0.2402; k3 = pi_ref/pi - ln(pi_ref/pi) - 1 = 0.5 + ln 2 - 1 = 0.1931
    logprobs, ref_logprobs = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert kl_k1(logprobs, ref_logprobs).item() == pytest.approx(math.log(2))
    assert kl_k2(logprobs, ref_logprobs).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_k3(logprobs, ref_logprobs).item() == pytest.approx(0.5 + math.log(2) - 1)


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
def test_kl_estimators_match_loop_reference(name):
    generator = torch.Generator().manual_seed(6)
    logprobs = -3 * torch.rand(4, 5, generator=generator, dtype=F64)  # (N, T)
    ref_logprobs = -3 * torch.rand(4, 5, generator=generator, dtype=F64)  # (N, T)
    expected = torch.tensor(reference_kl(logprobs.tolist(), ref_logprobs.tolist(), name), dtype=F64)
    assert_close(lookup(KL_ESTIMATORS, name, "KL estimator")(logprobs, ref_logprobs), expected)


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
def test_kl_estimators_are_zero_when_policies_agree(name):
    logprobs = -3 * torch.rand(4, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(KL_ESTIMATORS[name](logprobs, logprobs.clone()), torch.zeros(4, 5))


def test_k3_is_non_negative():
    generator = torch.Generator().manual_seed(8)
    logprobs = -10 * torch.rand(50, 40, generator=generator)  # (N, T)
    ref_logprobs = -10 * torch.rand(50, 40, generator=generator)  # (N, T), log-ratios in (-10, 10)
    assert (kl_k3(logprobs, ref_logprobs) >= 0).all()
    assert (kl_k1(logprobs, ref_logprobs) < 0).any()  # k1 alone can go negative


def test_k1_and_k3_are_unbiased_k2_is_not():
    # Over a 3-token vocabulary, sum_x pi(x) * k(x) is the exact expectation under pi:
    # KL(pi || pi_ref) for pi = [0.7, 0.2, 0.1], pi_ref = [0.2, 0.3, 0.5]
    #   = 0.7 ln 3.5 + 0.2 ln(2/3) + 0.1 ln 0.2 = 0.8769 - 0.0811 - 0.1609 = 0.6349
    pi, pi_ref = torch.tensor([0.7, 0.2, 0.1], dtype=F64), torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    exact = (pi * (pi / pi_ref).log()).sum()
    assert exact.item() == pytest.approx(0.7 * math.log(3.5) + 0.2 * math.log(2 / 3) + 0.1 * math.log(0.2))
    logprobs, ref_logprobs = pi.log()[None, :], pi_ref.log()[None, :]  # (1, 3): every token once
    assert_close((pi * kl_k1(logprobs, ref_logprobs)).sum(), exact)
    assert_close((pi * kl_k3(logprobs, ref_logprobs)).sum(), exact)
    assert abs((pi * kl_k2(logprobs, ref_logprobs)).sum() - exact) > 0.05


# ----------------------------------------------------------------------------- loss aggregation


def test_loss_aggregation_hand_computed():
    # lengths 3, 1, 0 with N = 3, max_length 4
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # sequence: 1 / 3 / 3 = 1/9 on row 0, 1 / 1 / 3 = 1/3 on row 1, row 2 empty but counted in N
    expected_sequence = torch.tensor(
        [[1 / 9, 1 / 9, 1 / 9, 0.0], [1 / 3, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    assert_close(sequence_weights(mask, 4), expected_sequence)
    # token: 4 real tokens -> 1/4 each
    assert_close(token_weights(mask, 4), mask / 4)
    # constant: 1 / (4 * 3) = 1/12 each
    assert_close(constant_weights(mask, 4), mask / 12)
    for name in LOSS_AGGREGATIONS:
        assert torch.isfinite(LOSS_AGGREGATIONS[name](torch.zeros(2, 3), 3)).all()  # no tokens at all


@pytest.mark.parametrize("name", sorted(LOSS_AGGREGATIONS))
def test_loss_aggregation_matches_loop_reference(name):
    mask = random_mask(7, 6, torch.Generator().manual_seed(9))
    expected = torch.tensor(reference_weights(mask.tolist(), name, max_length=6), dtype=F64)
    assert_close(lookup(LOSS_AGGREGATIONS, name, "loss aggregation")(mask, 6), expected)


def test_constant_weights_need_positive_max_length():
    with pytest.raises(ValueError, match="max_length > 0"):
        constant_weights(torch.ones(2, 3), 0)


def micro_batch_gradient(name: str, chunk_size: int | None, recompute_weights: bool = False):
    """Gradient of sum(per_token_loss * w) + beta * sum(k3 * w) for a Linear policy, split in chunks."""
    generator = torch.Generator().manual_seed(10)
    num_sequences, num_tokens, features, vocab, beta = 6, 5, 4, 7, 0.04
    model = torch.nn.Linear(features, vocab).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(vocab, features, generator=generator))
        model.bias.copy_(torch.randn(vocab, generator=generator))
    inputs = torch.randn(num_sequences, num_tokens, features, generator=generator, dtype=F64)  # (N, T, F)
    tokens = torch.randint(0, vocab, (num_sequences, num_tokens), generator=generator)  # (N, T)
    mask = random_mask(num_sequences, num_tokens, generator)  # (N, T)
    with torch.no_grad():
        current = token_logprobs(model(inputs), tokens)  # (N, T)
    noise = 0.3 * torch.randn(2, num_sequences, num_tokens, generator=generator, dtype=F64)  # (2, N, T)
    old_logprobs, ref_logprobs = current + noise[0], current + noise[1]  # (N, T) each
    advantages = torch.randn(num_sequences, generator=generator, dtype=F64)  # (N,)
    weights = LOSS_AGGREGATIONS[name](mask, num_tokens)  # (N, T), computed once on the full minibatch

    total_loss = 0.0
    for rows in torch.arange(num_sequences).split(chunk_size or num_sequences):
        if recompute_weights:  # the mistake the invariance rules out
            chunk_weights = LOSS_AGGREGATIONS[name](mask[rows], num_tokens)  # (n, T)
        else:
            chunk_weights = weights[rows]  # (n, T)
        logprobs = token_logprobs(model(inputs[rows]), tokens[rows])  # (n, T)
        policy = clipped_surrogate_loss(logprobs, old_logprobs[rows], advantages[rows], 0.2, 0.28)
        kl = kl_k3(logprobs, ref_logprobs[rows])  # (n, T)
        loss = (policy.per_token_loss * chunk_weights).sum() + beta * (kl * chunk_weights).sum()
        loss.backward()  # gradients accumulate over micro-batches
        total_loss += loss.item()
    return total_loss, torch.cat([model.weight.grad.flatten(), model.bias.grad])


@pytest.mark.parametrize("name", sorted(LOSS_AGGREGATIONS))
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4])  # 4 leaves an uneven last chunk of 2
def test_micro_batching_does_not_change_loss_or_gradient(name, chunk_size):
    full_loss, full_gradient = micro_batch_gradient(name, chunk_size=None)
    chunked_loss, chunked_gradient = micro_batch_gradient(name, chunk_size=chunk_size)
    assert full_gradient.abs().sum() > 0
    assert chunked_loss == pytest.approx(full_loss, abs=1e-10)
    assert_close(chunked_gradient, full_gradient, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["sequence", "token"])
def test_recomputing_weights_per_micro_batch_would_change_the_gradient(name):
    # the invariance above holds only because the weights are sliced, not recomputed per chunk
    _, full_gradient = micro_batch_gradient(name, chunk_size=None)
    _, wrong_gradient = micro_batch_gradient(name, chunk_size=2, recompute_weights=True)
    assert (wrong_gradient - full_gradient).abs().max() > 1e-3


# ----------------------------------------------------------------------------- pass@k


def test_pass_at_k_hand_computed():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # n=10, c=3, k=1: the fraction correct, 0.3
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(5, 0, 3) == 0.0  # nothing correct
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k: every pair holds a correct sample


def test_pass_at_k_matches_enumeration_of_all_subsets():
    for n in range(1, 7):
        for c in range(n + 1):
            correct = [i < c for i in range(n)]
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(correct, k))
                brute_force = sum(any(subset) for subset in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute_force, abs=1e-12), (n, c, k)
                closed_form = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(closed_form, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(2000, 1000) ~ 2e600 overflows a float; the product form does not.
    # n=2000, c=1, k=1000: 1 - C(1999, 1000)/C(2000, 1000) = 1 - 1000/2000 = 0.5
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)


@pytest.mark.parametrize("n, c, k", [(5, 2, 6), (5, 6, 1), (-1, 0, 1), (5, -1, 1), (5, 2, 0)])
def test_pass_at_k_rejects_invalid_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k needs"):
        pass_at_k(n, c, k)


# ----------------------------------------------------------------------------- lookup


def test_lookup_returns_entry_and_lists_valid_names():
    assert lookup(ADVANTAGE_ESTIMATORS, "grpo", "advantage estimator") is grpo_advantages
    with pytest.raises(ValueError) as error:
        lookup(ADVANTAGE_ESTIMATORS, "gpro", "advantage estimator")
    assert str(error.value) == "unknown advantage estimator 'gpro'; valid: dr_grpo, grpo, reinforce, rloo"
    with pytest.raises(ValueError, match="valid: k1, k2, k3"):
        lookup(KL_ESTIMATORS, "k4", "KL estimator")
    with pytest.raises(ValueError, match="valid: constant, sequence, token"):
        lookup(LOSS_AGGREGATIONS, "seq", "loss aggregation")


# ----------------------------------------------------------------------------- PPO with a critic, DAPO


def test_gae_monte_carlo_case_by_hand():
    # gamma = lam = 1: A_t = reward-to-go - V_t, returns = reward-to-go = 1 everywhere
    result = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 1.0)
    assert_close(result.advantages, torch.tensor([[0.5, 0.4, 0.3]]))
    assert_close(result.returns, torch.tensor([[1.0, 1.0, 1.0]]))


def test_gae_discounted_with_padding_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])  # row 1: position 2 is padding holding junk
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    result = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: delta2 = 1 - .7 = .3; delta1 = .9*.7 - .6 = .03; A1 = .03 + .45*.3 = .165
    #        delta0 = .9*.6 - .5 = .04; A0 = .04 + .45*.165 = .11425
    # row 1: delta1 = 1 - .4 = .6 (nothing after the last real token); delta0 = .9*.4 - .2 = .16; A0 = .16+.45*.6
    assert_close(result.advantages, torch.tensor([[0.11425, 0.165, 0.3], [0.43, 0.6, 0.0]]))
    assert_close(result.returns, torch.tensor([[0.61425, 0.765, 1.0], [0.63, 1.0, 0.0]]))


def test_gae_matches_the_sum_of_discounted_td_errors():
    """A_t = sum_l (gamma lam)^l delta_{t+l}, computed by a plain double loop, on random right-padded rows."""
    generator = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    lengths = [7, 1, 4, 0, 6]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(7)] for n in lengths])
    gamma, lam = 0.95, 0.8
    expected = torch.zeros(5, 7)
    for i, n in enumerate(lengths):
        deltas = [rewards[i, t] + gamma * (values[i, t + 1] if t + 1 < n else 0.0) - values[i, t] for t in range(n)]
        for t in range(n):
            expected[i, t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
    result = gae(rewards, values, mask, gamma, lam)
    assert_close(result.advantages, expected)
    assert_close(result.returns, (expected + values) * mask)


def test_gae_rejects_bad_discounts():
    with pytest.raises(ValueError, match="gamma"):
        gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 1.5, 0.9)


def test_whiten_by_hand_ignores_padding():
    result = whiten(torch.tensor([[1.0, 2.0], [3.0, 100.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    # mean 2, population variance (1 + 0 + 1) / 3, std 0.81650
    assert_close(result, torch.tensor([[-1.224745, 0.0], [1.224745, 0.0]]))


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[0.0, 0.8, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    result = clipped_value_loss(values, old, returns, clip=0.5)
    # col 0: unclipped (1-2)^2 = 1, clipped V = 0.5 -> 2.25: the larger, so clipped, loss 1.125, no gradient
    # col 1: inside the range, both 1 -> 0.5; col 2: unclipped 1 > clipped (-0.5)^2 = .25 -> 0.5, gradient flows
    assert_close(result.per_token_loss, torch.tensor([[1.125, 0.5, 0.5]]))
    assert result.is_clipped.tolist() == [[True, False, False]]
    result.per_token_loss.sum().backward()
    assert_close(values.grad, torch.tensor([[0.0, 1.0, -1.0]]))  # d/dV 0.5 (V - R)^2 = V - R
    unclipped = clipped_value_loss(values.detach(), old, returns, clip=0.0)
    assert_close(unclipped.per_token_loss, torch.tensor([[0.5, 0.5, 0.5]]))


def test_outcome_token_rewards_go_on_the_last_real_token():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    result = outcome_token_rewards(torch.tensor([1.0, 2.0, 3.0]), mask)
    assert_close(result, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))


def test_informative_groups():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.5]])
    assert informative_groups(rewards).tolist() == [False, True, False, False]


def test_overlong_penalty_by_hand():
    lengths = torch.tensor([5, 6, 7, 8, 10, 11])
    # budget 10, buffer 4: free up to 6, then -1/4 per token, -1 past the budget
    assert_close(overlong_penalty(lengths, 10, 4), torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 10, 0)


# ---- rollout corrections (TIS, MIS) -------------------------------------------------------------------------

def _correction_inputs():
    """Two responses of 3 and 2 tokens: log pi_old - log pi_engine = [ln 3, ln 0.5, ln 1.5] and [ln 2.5, ln 0.6]."""
    old = torch.log(torch.tensor([[0.3, 0.2, 0.3], [0.5, 0.3, 0.9]]))
    engine = torch.log(torch.tensor([[0.1, 0.4, 0.2], [0.2, 0.5, 0.9]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return old, engine, mask


def test_truncated_importance_sampling_by_hand():
    old, engine, mask = _correction_inputs()
    # token ratios 0.3/0.1 = 3, 0.2/0.4 = 0.5, 0.3/0.2 = 1.5 | 0.5/0.2 = 2.5, 0.3/0.5 = 0.6, padding exp(0) = 1
    # min(ratio, 2): 2, 0.5, 1.5 | 2, 0.6, 1; truncated: the 3 and the 2.5
    result = ROLLOUT_CORRECTIONS["tis"](old, engine, mask, 2.0, "token")
    assert_close(result.weights, torch.tensor([[2.0, 0.5, 1.5], [2.0, 0.6, 1.0]]))
    assert torch.equal(result.mask, mask)
    assert result.corrected.tolist() == [[True, False, False], [True, False, False]]
    # sequence level: products 3 * 0.5 * 1.5 = 2.25 and 2.5 * 0.6 = 1.5 (padding counts 1): min(., 2) = 2 and 1.5;
    # only the first exceeds the cap
    result = ROLLOUT_CORRECTIONS["tis"](old, engine, mask, 2.0, "sequence")
    assert_close(result.weights, torch.tensor([[2.0, 2.0, 2.0], [1.5, 1.5, 1.5]]))
    assert result.corrected.tolist() == [[True, True, True], [False, False, False]]


def test_masked_importance_sampling_by_hand():
    old, engine, mask = _correction_inputs()
    # token ratios 3, 0.5, 1.5 | 2.5, 0.6: above 2, the 3 and the 2.5 leave the loss
    result = ROLLOUT_CORRECTIONS["mis"](old, engine, mask, 2.0, "token")
    assert_close(result.weights, torch.ones(2, 3))
    assert_close(result.mask, torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]))
    assert result.corrected.tolist() == [[True, False, False], [True, False, False]]
    # sequence products 2.25 (> 2: the whole response goes) and 1.5 (kept)
    result = ROLLOUT_CORRECTIONS["mis"](old, engine, mask, 2.0, "sequence")
    assert_close(result.mask, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    assert result.corrected.sum() == 3  # the padding of a masked response is not counted


def test_no_rollout_correction_changes_nothing():
    old, engine, mask = _correction_inputs()
    result = ROLLOUT_CORRECTIONS["none"](old, engine, mask, 2.0, "token")
    assert torch.equal(result.weights, torch.ones(2, 3)) and torch.equal(result.mask, mask)
    assert not result.corrected.any()


def test_rollout_corrections_are_identity_when_engine_equals_trainer():
    old, _, mask = _correction_inputs()
    for name in ROLLOUT_CORRECTIONS:
        for level in ROLLOUT_CORRECTION_LEVELS:
            result = ROLLOUT_CORRECTIONS[name](old, old.clone(), mask, 2.0, level)
            assert torch.equal(result.weights, torch.ones(2, 3)) and torch.equal(result.mask, mask), (name, level)


def test_engine_ratio_loop_reference():
    torch.manual_seed(0)
    old, engine = torch.randn(4, 6) * 0.3, torch.randn(4, 6) * 0.3
    mask = (torch.rand(4, 6) > 0.3).float()
    sequence = engine_ratio(old, engine, mask, "sequence")
    for i in range(4):
        product = 1.0
        for t in range(6):
            if mask[i, t]:
                product *= math.exp(old[i, t] - engine[i, t])
                assert math.isclose(engine_ratio(old, engine, mask, "token")[i, t], math.exp(old[i, t] - engine[i, t]),
                                    rel_tol=1e-5)
        assert_close(sequence[i], torch.full((6,), product), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="valid: token, sequence"):
        engine_ratio(old, engine, mask, "word")


def test_logprob_mismatch_by_hand():
    old, engine, mask = _correction_inputs()
    # |differences| on real tokens: ln 3 = 1.0986, ln 2 = 0.6931, ln 1.5 = 0.4055, ln 2.5 = 0.9163, ln(5/3) = 0.5108
    mismatch = logprob_mismatch(old, engine, mask)
    expected = (math.log(3) + math.log(2) + math.log(1.5) + math.log(2.5) + math.log(5 / 3)) / 5
    assert math.isclose(mismatch.mean, expected, rel_tol=1e-5)
    assert math.isclose(mismatch.max, math.log(3), rel_tol=1e-5)
    assert logprob_mismatch(old, engine, torch.zeros_like(mask)) == (0.0, 0.0)


def test_effective_sample_size_of_importance_weights():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert effective_sample_size(torch.ones(1, 4), mask) == 1.0  # on-policy: every weight 1
    # weights 2, 0.5, 1 (the masked 9 does not count): (3.5)^2 / (3 * (4 + 0.25 + 1)) = 12.25 / 15.75 = 7/9
    weights = torch.tensor([[2.0, 0.5, 1.0, 9.0]])
    assert effective_sample_size(weights, mask) == pytest.approx(7 / 9, abs=1e-12)
    # one weight carries everything: (w)^2 / (3 w^2) = 1/3
    assert effective_sample_size(torch.tensor([[5.0, 0.0, 0.0, 0.0]]), mask) == pytest.approx(1 / 3)
    assert effective_sample_size(weights, torch.zeros(1, 4)) == 1.0  # nothing to weigh
