"""The pure math of R1-Zero training: advantages, log-probabilities, the policy losses (PPO's clip, GSPO,
CISPO), KL estimators, rollout corrections (TIS, MIS), loss aggregation weights and pass@k.

    from r1zero.algorithms import ADVANTAGE_ESTIMATORS, lookup
    advantages = lookup(ADVANTAGE_ESTIMATORS, "grpo", "advantage estimator")(rewards, 1e-6)

Every function takes tensors and plain scalars and returns tensors: no config, no I/O, no
distributed state. Variants of one idea share one signature and live in a dict; `lookup` picks one
by name and says which names are valid.

Shape notation, used in every docstring and shape comment:
    B  prompts in the batch
    G  samples (completions) per prompt, a "group"
    N  = B * G sequences, ordered group by group (rows g*G .. g*G+G-1 are prompt g)
    T  completion tokens per sequence, right-padded
    V  vocabulary size
`mask` is always a (N, T) float tensor: 1.0 on real completion tokens, 0.0 on padding.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

AdvantageEstimator = Callable[[Tensor, float], Tensor]  # (rewards (B, G), eps) -> (B, G)
KLEstimator = Callable[[Tensor, Tensor], Tensor]  # (logprobs (N, T), ref_logprobs (N, T)) -> (N, T)
LossAggregation = Callable[[Tensor, int], Tensor]  # (mask (N, T), max_length) -> weights (N, T)


def lookup(table: dict, name: str, what: str):
    """Return table[name]; an unknown name raises ValueError listing the valid names.

    >>> lookup(KL_ESTIMATORS, "k3", "KL estimator") is kl_k3
    True
    """
    if name not in table:
        valid = ", ".join(sorted(table))
        raise ValueError(f"unknown {what} {name!r}; valid: {valid}")
    return table[name]


# ----------------------------------------------------------------------------- advantages


def _checked_rewards(rewards: Tensor, min_group_size: int, estimator: str) -> Tensor:
    """Validate a (B, G) reward tensor and return it as floating point."""
    if rewards.dim() != 2:
        raise ValueError(f"{estimator}: rewards must have shape (B, G), got {tuple(rewards.shape)}")
    if rewards.shape[1] < min_group_size:
        raise ValueError(
            f"{estimator}: needs at least {min_group_size} samples per prompt, got G={rewards.shape[1]}; "
            f"raise the number of samples per prompt or choose another advantage estimator"
        )
    return rewards if rewards.is_floating_point() else rewards.float()


def _zero_equal_groups(advantages: Tensor, rewards: Tensor) -> Tensor:
    """Set the advantages of groups whose rewards are all equal to exactly 0.

    Floating-point means of equal values can be off by one ulp (mean of [0.9]*3 in float32), which
    would leave a tiny non-zero advantage, amplified by the std division in GRPO.
    """
    all_equal = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # (B, 1)
    return torch.where(all_equal, torch.zeros_like(advantages), advantages)  # (B, G)


def grpo_advantages(rewards: Tensor, eps: float) -> Tensor:
    """GRPO outcome advantage: A_i = (r_i - mean(r)) / (std(r) + eps), within each group.

    DeepSeekMath (Shao et al. 2024), section 4.1.2, "outcome supervision"; used by DeepSeek-R1-Zero.
    std uses Bessel's correction (divides by G - 1), as TRL and verl compute it. Needs G >= 2.
    A group whose rewards are all equal gets advantage 0.
    """
    rewards = _checked_rewards(rewards, 2, "grpo")
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    std = rewards.std(dim=1, keepdim=True, correction=1)  # (B, 1)
    return _zero_equal_groups((rewards - mean) / (std + eps), rewards)  # (B, G)


def dr_grpo_advantages(rewards: Tensor, eps: float) -> Tensor:
    """Dr. GRPO advantage: A_i = r_i - mean(r), within each group; no std division.

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective": dividing by the
    group std up-weights groups that are nearly all right or all wrong (a question-difficulty bias).
    eps is unused; it is kept so that all estimators share one signature.
    """
    rewards = _checked_rewards(rewards, 1, "dr_grpo")
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    return _zero_equal_groups(rewards - mean, rewards)  # (B, G)


def rloo_advantages(rewards: Tensor, eps: float) -> Tensor:
    """RLOO advantage: A_i = r_i - (1 / (G - 1)) * sum_{j != i} r_j = G / (G - 1) * (r_i - mean(r)).

    REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics"): the baseline of each sample is
    the mean of the other G - 1 samples of its group, so it does not depend on the sample itself.
    Needs G >= 2. eps is unused (shared signature).
    """
    rewards = _checked_rewards(rewards, 2, "rloo")
    group_size = rewards.shape[1]
    others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (group_size - 1)  # (B, G)
    return _zero_equal_groups(rewards - others_mean, rewards)  # (B, G)


def reinforce_advantages(rewards: Tensor, eps: float) -> Tensor:
    """REINFORCE with a batch-mean baseline: A_i = r_i - mean of all B * G rewards.

    Williams 1992. The baseline ignores the groups, so "all rewards equal" means the whole batch:
    only then is every advantage exactly 0. eps is unused (shared signature).
    """
    rewards = _checked_rewards(rewards, 1, "reinforce")
    whole_batch = rewards.reshape(1, -1)  # (1, N): the batch is the one group
    advantages = _zero_equal_groups(whole_batch - whole_batch.mean(), whole_batch)  # (1, N)
    return advantages.reshape(rewards.shape)  # (B, G)


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce": reinforce_advantages,
}


# ----------------------------------------------------------------------------- PPO with a critic


class GAE(NamedTuple):
    """What `gae` returns; both (N, T), 0 on padding."""

    advantages: Tensor  # (N, T)
    returns: Tensor  # (N, T) advantages + values: the critic's regression target


def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> GAE:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded completions.

        delta_t = r_t + gamma * V_{t+1} - V_t          (V past the last real token is 0: the episode ends)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t

    token_rewards, values, mask: (N, T). values[:, t] is the critic's V(s_t), the state before completion
    token t is generated; token_rewards[:, t] is the reward for token t (the outcome reward on the last real
    token, minus a KL penalty per token when it is folded into the reward). Padding gets 0 and never leaks
    into real positions, whatever values or rewards it holds. lam = 1 makes A_t the reward-to-go minus V_t
    (Monte Carlo); lam = 0 the one-step TD error.

    The recursion steps over masked positions: t+1 above is the next position whose mask is 1. So a tool's
    output inside a completion (mask 0 there) is not a step of the episode: the sampled token before it
    bootstraps from the value of the first sampled token after it, and the output gets 0. On right padding this
    is the plain recursion (nothing follows the last real token).
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gae needs 0 <= gamma <= 1 and 0 <= lam <= 1, got gamma={gamma}, lam={lam}")
    mask = mask.to(values.dtype)
    token_rewards, values = token_rewards * mask, values * mask  # (N, T): padding cannot leak
    advantages = torch.zeros_like(values)  # (N, T)
    next_value = torch.zeros_like(values[:, 0])  # (N,)
    next_advantage = torch.zeros_like(values[:, 0])  # (N,)
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]  # (N,)
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        real = mask[:, t] > 0  # (N,) a masked position passes the next real token's numbers on unchanged
        next_value = torch.where(real, values[:, t], next_value)
        next_advantage = torch.where(real, advantages[:, t], next_advantage)
    return GAE(advantages=advantages, returns=(advantages + values) * mask)


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / (std + eps) over the real tokens, the PPO advantage normalisation; padding stays 0.
    std is the population std (divides by the token count)."""
    mean = masked_mean(values, mask)
    std = masked_mean((values - mean) ** 2, mask).sqrt()
    return (values - mean) / (std + eps) * mask  # (N, T)


class ValueLoss(NamedTuple):
    """What `clipped_value_loss` returns; both (N, T)."""

    per_token_loss: Tensor  # (N, T) aggregate with loss aggregation weights
    is_clipped: Tensor  # (N, T) bool: the clipped error was the larger, so this token's gradient is 0


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float) -> ValueLoss:
    """PPO's clipped value loss: 0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2).

    The critic may not move its prediction more than `clip` from the value it gave when the batch was
    generated (Schulman et al. 2017's implementation; TinyZero/verl default 0.5). clip <= 0 disables it.
    """
    unclipped = (values - returns) ** 2  # (N, T)
    if clip <= 0:
        return ValueLoss(0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool))
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)  # (N, T)
    clipped = (clipped_values - returns) ** 2  # (N, T)
    return ValueLoss(0.5 * torch.maximum(unclipped, clipped), clipped > unclipped)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over real tokens: how much of the returns' spread the critic
    predicts. 1 is a perfect critic, 0 no better than a constant, negative worse; NaN when the returns do not
    vary. values, returns, mask: (N, T)."""
    residual = masked_mean((returns - values - masked_mean(returns - values, mask)) ** 2, mask)
    spread = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    return float(1 - residual / spread) if spread > 0 else float("nan")


def outcome_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Put each sequence's scalar reward (N,) on its last real token (the last position whose mask is 1, also when
    the mask has holes): (N, T), 0 elsewhere. A row with no tokens gets nothing (no position to hold it)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)  # (T,) 1-based
    last = ((mask > 0) * positions).amax(dim=1) - 1  # (N,) -1 for an empty row
    token_rewards = torch.zeros_like(mask, dtype=rewards.dtype)  # (N, T)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    token_rewards[rows, last[rows]] = rewards[rows]
    return token_rewards


# ----------------------------------------------------------------------------- DAPO: dynamic sampling, overlong shaping


def informative_groups(rewards: Tensor) -> Tensor:
    """(B,) bool: groups whose G rewards are not all equal. DAPO's dynamic sampling keeps only these: a
    group that is all right or all wrong has zero advantage under any group baseline, so no gradient."""
    return (rewards != rewards[:, :1]).any(dim=1)


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward:

        0                                  if L <= max_length - buffer
        (max_length - buffer - L) / buffer if max_length - buffer < L <= max_length   (0 down to -1)
        -1                                 if L > max_length

    lengths (N,) in tokens. buffer is DAPO's L_cache (4096 of a 20480 budget in the paper).
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong_penalty needs 0 < buffer <= max_length, got buffer={buffer}, "
                         f"max_length={max_length}")
    start = max_length - buffer
    penalty = (start - lengths.to(torch.float32)) / buffer  # (N,)
    penalty = torch.where(lengths <= start, torch.zeros_like(penalty), penalty)
    return torch.where(lengths > max_length, torch.full_like(penalty, -1.0), penalty)


# ----------------------------------------------------------------------------- log-probabilities, entropy


def _at_least_float32(x: Tensor) -> Tensor:
    """Upcast bf16/fp16 to float32; leave float32 and float64 as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log pi(token) = logits[token] - logsumexp(logits), per position, in float32 or wider.

    Gathers the one logit needed instead of materialising the full (N, T, V) log_softmax; bf16/fp16
    logits are still upcast to one float32 copy, since bf16 keeps only about 3 significant digits.
    logits (N, T, V) must already be aligned with tokens (N, T): logits[:, t] predicts tokens[:, t].
    """
    logits = _at_least_float32(logits)  # (N, T, V)
    chosen = logits.gather(dim=-1, index=tokens.long().unsqueeze(-1)).squeeze(-1)  # (N, T)
    return chosen - torch.logsumexp(logits, dim=-1)  # (N, T)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy H = -sum_v p_v log p_v of the next-token distribution, in float32 or wider.

    Computed as H = logsumexp(z) - sum_v p_v z_v (since log p_v = z_v - logsumexp(z)), which stays
    finite for very large or very negative logits.
    """
    logits = _at_least_float32(logits)  # (N, T, V)
    log_normaliser = torch.logsumexp(logits, dim=-1)  # (N, T)
    probs = torch.softmax(logits, dim=-1)  # (N, T, V)
    return log_normaliser - (probs * logits).sum(dim=-1)  # (N, T)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """sum(values * mask) / max(sum(mask), 1): the mean over real tokens, 0 when there are none."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)  # scalar


# ----------------------------------------------------------------------------- policy loss


class PolicyLoss(NamedTuple):
    """What every policy loss returns (`clipped_surrogate_loss`, POLICY_LOSSES); every field is (N, T), padding
    included."""

    per_token_loss: Tensor  # (N, T) loss of each token; aggregate with loss aggregation weights
    ratio: Tensor  # (N, T) pi / pi_old, still attached to the graph (detach it to log it)
    is_clipped: Tensor  # (N, T) bool: clipping changed this token's term (PPO, GSPO: its gradient is zero)


def clipped_surrogate_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_low: float, clip_high: float
) -> PolicyLoss:
    """PPO clipped surrogate, negated to be minimised, with separate lower and upper clip ranges:

        ratio = exp(log pi - log pi_old)
        loss  = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)

    PPO (Schulman et al. 2017) with clip_low == clip_high (0.2 in DeepSeekMath). clip_high > clip_low
    is DAPO's clip-higher (Yu et al. 2025: clip_low 0.2, clip_high 0.28), which lets the probability
    of unlikely tokens grow further and so keeps entropy from collapsing.

    logprobs, old_logprobs (N, T); advantages (N,), broadcast over tokens, or (N, T).

    Clip fraction: is_clipped marks tokens where the clipped term is strictly smaller than the
    unclipped one, so min() picks it and its gradient is zero (ratio > 1 + clip_high with A > 0, or
    ratio < 1 - clip_low with A < 0). Tokens outside the range on the other side (e.g. ratio < 1 -
    clip_low with A > 0) keep their gradient and are not counted; A == 0 is never clipped.
    """
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(
            f"clipped_surrogate_loss needs 0 <= clip_low < 1 and clip_high >= 0, "
            f"got clip_low={clip_low}, clip_high={clip_high}"
        )
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (N, 1), broadcasts over T
    ratio = torch.exp(logprobs - old_logprobs)  # (N, T)
    unclipped = ratio * advantages  # (N, T)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages  # (N, T)
    per_token_loss = -torch.minimum(unclipped, clipped)  # (N, T)
    is_clipped = clipped < unclipped  # (N, T)
    return PolicyLoss(per_token_loss=per_token_loss, ratio=ratio, is_clipped=is_clipped)


# The policy losses of the `--policy-loss` setting. One signature for all:
#   (logprobs (N, T), old_logprobs (N, T), advantages (N,) or (N, T), mask (N, T), clip_low, clip_high) -> PolicyLoss
# The per-token loss is then weighted by a loss aggregation (below), like every other token term. A sequence-level
# loss (GSPO) puts each response's loss on every one of its tokens, so that the "sequence" aggregation (a mean
# over each response's tokens, then over responses) counts it once per response.
PolicyLossFunction = Callable[[Tensor, Tensor, Tensor, Tensor, float, float], PolicyLoss]


def ppo_clip_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_low: float,
                  clip_high: float) -> PolicyLoss:
    """PPO's clipped surrogate per token, `clipped_surrogate_loss` (GRPO, DAPO's clip-higher): the default.
    mask is unused (shared signature): the aggregation weights leave padding out."""
    return clipped_surrogate_loss(logprobs, old_logprobs, advantages, clip_low, clip_high)


def gspo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_low: float,
              clip_high: float) -> PolicyLoss:
    """GSPO, Group Sequence Policy Optimization (Zheng et al. 2025, arXiv 2507.18071): one importance ratio per
    response, the geometric mean of its tokens' ratios, clipped at the sequence level:

        s_i    = exp( (1 / |o_i|) * sum_t (log pi(o_it) - log pi_old(o_it)) )
        loss_i = -min(s_i * A_i, clip(s_i, 1 - clip_low, 1 + clip_high) * A_i)

    Written in the paper's GSPO-token form, s_it = sg(s_i) * pi(o_it) / sg(pi(o_it)), whose value is s_i on every
    token of response i and whose gradient is s_i * grad log pi(o_it); with one advantage per response and the
    "sequence" aggregation it is GSPO itself: grad J = mean_i s_i A_i (1 / |o_i|) sum_t grad log pi(o_it) over the
    responses whose clip is not active. The paper's clip ranges are tiny (3e-4 below, 4e-4 above), since a
    length-normalised ratio moves far less than a token's. advantages (N,) or (N, T) (per-token advantages give
    GSPO-token). ratio and is_clipped hold each response's value on all its tokens.
    """
    if clip_low < 0.0 or clip_high < 0.0:
        raise ValueError(f"gspo_loss needs clip_low >= 0 and clip_high >= 0, got {clip_low}, {clip_high}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (N, 1), broadcasts over T
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # (N, 1)
    log_sequence_ratio = ((logprobs - old_logprobs) * mask).sum(dim=1, keepdim=True) / lengths  # (N, 1)
    token_ratio = torch.exp(log_sequence_ratio.detach() + logprobs - logprobs.detach())  # (N, T) value s_i
    unclipped = token_ratio * advantages  # (N, T)
    clipped = torch.clamp(token_ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages  # (N, T)
    return PolicyLoss(per_token_loss=-torch.minimum(unclipped, clipped), ratio=token_ratio,
                      is_clipped=clipped < unclipped)


def cispo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_low: float,
               clip_high: float) -> PolicyLoss:
    """CISPO, Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585, eq. 4-5): REINFORCE weighted
    by the importance ratio, the ratio clipped and detached, so clipping bounds a token's weight but never drops
    its gradient:

        r_t    = pi(o_t) / pi_old(o_t)
        loss_t = -sg(clip(r_t, 1 - clip_low, 1 + clip_high)) * A * log pi(o_t)

    PPO's clip zeroes the gradient of a token whose ratio left the range in the direction of its advantage (often
    a rare "fork" token such as "However" or "Wait" after its first update); here that token still pushes with
    weight 1 + clip_high. MiniMax-M1 sets no lower bound (clip_low 1: the weight never falls below 0) and tunes
    only the upper one. is_clipped marks the tokens whose weight was truncated (their gradient is kept).
    mask is unused (shared signature). The loss's value is not PPO's (it is -A * log pi at ratio 1), its gradient
    at ratio 1 is: -A * grad log pi.
    """
    if not 0.0 <= clip_low <= 1.0 or clip_high < 0.0:
        raise ValueError(f"cispo_loss needs 0 <= clip_low <= 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (N, 1), broadcasts over T
    ratio = torch.exp(logprobs - old_logprobs)  # (N, T)
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high).detach()  # (N, T)
    is_clipped = (ratio.detach() != weight)  # (N, T)
    return PolicyLoss(per_token_loss=-weight * advantages * logprobs, ratio=ratio, is_clipped=is_clipped)


POLICY_LOSSES: dict[str, PolicyLossFunction] = {"ppo_clip": ppo_clip_loss, "gspo": gspo_loss, "cispo": cispo_loss}


# ----------------------------------------------------------------------------- KL estimators
# Per-token estimates of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020, "Approximating
# KL divergence", http://joschu.net/blog/kl-approx.html). With r = pi_ref / pi:
#   k1 = -log r            unbiased, high variance, can be negative
#   k2 = (log r)^2 / 2     biased (low bias when pi is close to pi_ref), low variance, >= 0
#   k3 = r - log r - 1     unbiased (E_pi[r] = 1), low variance, >= 0


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref. Unbiased, high variance, can be negative (Schulman 2020)."""
    return logprobs - ref_logprobs  # (N, T)


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi - log pi_ref)^2. Biased but low variance, >= 0 (Schulman 2020)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2  # (N, T)


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = pi_ref / pi - log(pi_ref / pi) - 1 = exp(ref - logp) - (ref - logp) - 1.

    Schulman 2020; the estimator of DeepSeekMath (eq. 4) and DeepSeek-R1. Unbiased and >= 0
    (e^x >= 1 + x). No clamping: a huge log-ratio gives a huge penalty, which is what it measures.
    """
    log_ratio = ref_logprobs - logprobs  # (N, T) log(pi_ref / pi)
    return torch.exp(log_ratio) - log_ratio - 1.0  # (N, T)


KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# ----------------------------------------------------------------------------- rollout correction
# A fast inference engine (vLLM) samples with other kernels than the trainer's forward, so its probabilities
# pi_engine differ from the trainer's pi_old for the same weights (more so in bfloat16 on GPUs), and the batch is
# off-policy by that much. The corrections re-weight each token by rho = pi_old / pi_engine (Yao et al. 2025,
# "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"), at one of two levels:
#   token     rho_it = exp(log pi_old(o_it) - log pi_engine(o_it))
#   sequence  rho_i  = exp(sum_t (log pi_old(o_it) - log pi_engine(o_it))), the product of its tokens' ratios,
#             on every token of response i
# One signature for all:
#   (old_logprobs (N, T), engine_logprobs (N, T), mask (N, T), cap, level) -> RolloutCorrection
# Both inputs come without gradient; so does every output.

ROLLOUT_CORRECTION_LEVELS = ("token", "sequence")


class RolloutCorrection(NamedTuple):
    """What every rollout correction returns (ROLLOUT_CORRECTIONS); every field is (N, T), padding included."""

    weights: Tensor  # (N, T) multiplies each token's policy loss (1 where nothing is corrected)
    mask: Tensor  # (N, T) float: the tokens that stay in the loss (the input mask minus those masked)
    corrected: Tensor  # (N, T) bool: real tokens whose weight was truncated (TIS) or that were masked (MIS)
    ratio_to: Tensor  # (N, T) the log-probabilities the policy loss's ratio pi_theta / pi_old takes as pi_old


RolloutCorrectionFunction = Callable[[Tensor, Tensor, Tensor, float, str], RolloutCorrection]


def engine_ratio(old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor, level: str) -> Tensor:
    """(N, T) rho = pi_old / pi_engine per token ("token"), or each response's product of its tokens' ratios on
    all its tokens ("sequence"); padding counts as ratio 1 in the product."""
    log_ratio = (old_logprobs - engine_logprobs) * mask  # (N, T)
    if level == "token":
        return torch.exp(log_ratio)  # (N, T)
    if level == "sequence":
        return torch.exp(log_ratio.sum(dim=1, keepdim=True)).expand_as(log_ratio)  # (N, T)
    raise ValueError(f"unknown rollout correction level {level!r}; valid: {', '.join(ROLLOUT_CORRECTION_LEVELS)}")


def no_rollout_correction(old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor, cap: float,
                          level: str) -> RolloutCorrection:
    """The engine's samples taken as the trainer's own: weight 1 everywhere, every token kept."""
    return RolloutCorrection(torch.ones_like(mask), mask, torch.zeros_like(mask, dtype=torch.bool), old_logprobs)


def truncated_importance_sampling(old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor, cap: float,
                                  level: str) -> RolloutCorrection:
    """TIS (Yao et al. 2025): each token's policy loss times the truncated ratio, a constant of the gradient:

        w = min(rho, C)

    so the update follows the trainer's pi_old rather than the engine's distribution, with the variance bounded
    by C (the paper: C = 2). `corrected` marks the real tokens where rho > C. Every token is kept."""
    ratio = engine_ratio(old_logprobs, engine_logprobs, mask, level)  # (N, T)
    return RolloutCorrection(torch.clamp(ratio, max=cap), mask, (ratio > cap) & (mask > 0), old_logprobs)


def masked_importance_sampling(old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor, cap: float,
                               level: str) -> RolloutCorrection:
    """MIS (Yao et al. 2025's masked variant): tokens (level "token") or whole responses ("sequence") whose
    ratio exceeds C leave the loss, the others count with weight 1:

        mask' = mask * [rho <= C]

    The masked tokens also leave the loss aggregation's token count, as DAPO's overlong filter's do."""
    ratio = engine_ratio(old_logprobs, engine_logprobs, mask, level)  # (N, T)
    rejected = (ratio > cap) & (mask > 0)  # (N, T)
    return RolloutCorrection(torch.ones_like(mask), mask * (~rejected).to(mask.dtype), rejected, old_logprobs)


def clip_to_sampler(old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor, cap: float,
                    level: str) -> RolloutCorrection:
    """Coupled PPO on off-policy samples: no weight; the policy loss's ratio is taken to the policy that sampled,

        rho_it = pi_theta(o_it) / pi_engine(o_it),  clipped to [1 - eps_low, 1 + eps_high] by the policy loss

    so the clip bounds how far an update moves from the sampling policy, however stale it was (the decoupled
    variants bound the move from the learner's pi_old only, which one update per batch never clips). Tinker's
    cookbook (PR#822) found this stable three steps off-policy where unclipped importance sampling collapsed.
    `corrected` marks the real tokens whose ratio at the start of the update, pi_old / pi_engine, is already
    outside [1 / cap, cap]."""
    ratio = engine_ratio(old_logprobs, engine_logprobs, mask, level)  # (N, T)
    outside = ((ratio > cap) | (ratio < 1 / cap)) & (mask > 0)  # (N, T)
    return RolloutCorrection(torch.ones_like(mask), mask, outside, engine_logprobs)


ROLLOUT_CORRECTIONS: dict[str, RolloutCorrectionFunction] = {
    "none": no_rollout_correction, "tis": truncated_importance_sampling, "mis": masked_importance_sampling,
    "clip": clip_to_sampler}


def effective_sample_size(weights: Tensor, mask: Tensor) -> float:
    """Kish's effective sample size of importance weights over the real tokens, as a share of their count:

        ESS = (sum w)^2 / (n * sum w^2)          in (0, 1]; 1 when every weight is equal (on-policy: all 1)

    How much of the batch an off-policy correction leaves (AReaL and other asynchronous trainers log it); 1.0 for
    an empty mask. weights, mask: (N, T)."""
    real = mask > 0
    chosen = weights[real].double()
    if chosen.numel() == 0 or float((chosen ** 2).sum()) == 0:
        return 1.0
    return float(chosen.sum() ** 2 / (chosen.numel() * (chosen ** 2).sum()))


class LogprobMismatch(NamedTuple):
    mean: float  # mean |log pi_old - log pi_engine| over the real tokens
    max: float  # the largest of them


def logprob_mismatch(old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor) -> LogprobMismatch:
    """How far the engine's log-probabilities are from the trainer's, over the real tokens (0, 0 when none)."""
    difference = (old_logprobs - engine_logprobs).abs() * mask  # (N, T)
    count = mask.sum()
    if count == 0:
        return LogprobMismatch(0.0, 0.0)
    return LogprobMismatch(float(difference.sum() / count), float(difference.max()))


# ----------------------------------------------------------------------------- loss aggregation
# Each mode returns per-token weights, and the loss is (per_token_loss * weights).sum(). The weights
# depend on the whole minibatch (its N, its token count), so compute them once on the minibatch and
# slice them for micro-batches or data-parallel shards: the sum of the slices' losses is then exactly
# the minibatch loss, and so is the sum of their gradients.


def sequence_weights(mask: Tensor, max_length: int) -> Tensor:
    """Mean over each response's tokens, then mean over responses: w_it = mask_it / |o_i| / N.

    The GRPO objective as written in DeepSeekMath (eq. 3). Long responses get less weight per token,
    which Dr. GRPO identifies as a length bias. A response with no tokens gets weight 0 but still
    counts in N. max_length is unused (shared signature).
    """
    num_sequences = mask.shape[0]
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # (N, 1)
    return mask / lengths / num_sequences  # (N, T)


def token_weights(mask: Tensor, max_length: int) -> Tensor:
    """Mean over all tokens of the minibatch: w_it = mask_it / sum(mask).

    DAPO's token-level policy-gradient loss (Yu et al. 2025): every token weighs the same, so long
    responses are not diluted. max_length is unused (shared signature).
    """
    return mask / mask.sum().clamp(min=1.0)  # (N, T)


def constant_weights(mask: Tensor, max_length: int) -> Tensor:
    """Sum over tokens divided by a fixed length, then mean over responses: w_it = mask_it / (L * N).

    Dr. GRPO (Liu et al. 2025): dividing by the constant L = max_length (the generation budget)
    instead of |o_i| removes the length bias; the weights depend on neither lengths nor token counts.
    """
    if max_length <= 0:
        raise ValueError(f"constant loss aggregation needs max_length > 0, got {max_length}")
    return mask / (max_length * mask.shape[0])  # (N, T)


LOSS_AGGREGATIONS: dict[str, LossAggregation] = {
    "sequence": sequence_weights,
    "token": token_weights,
    "constant": constant_weights,
}


# ----------------------------------------------------------------------------- evaluation


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n - c, k) / C(n, k).

    Chen et al. 2021 (Codex paper), computed in its numerically stable product form
    C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i). 1.0 when n - c < k (every k-subset
    holds a correct sample).
    """
    if n < 0 or c < 0 or k < 1:
        raise ValueError(f"pass_at_k needs n >= 0, c >= 0 and k >= 1, got n={n}, c={c}, k={k}")
    if c > n or k > n:
        raise ValueError(f"pass_at_k needs c <= n and k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
