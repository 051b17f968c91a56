"""The update: a step's samples as tensors (Rollout), the plan of minibatches, and the optimiser steps of the
policy (and, through the same loop, of PPO's critic).

    settings = UpdateSettings.from_config(config)           # names resolved to functions once, at setup
    plan = update_plan(rollout.lengths(), settings, generator, device)
    stats = update_policy(policy, optimizer, rollout, plan, settings)     # a PolicyStats

Nothing here reads a TrainConfig after setup, knows how training is distributed (a `parallel` object is passed
in: OneProcess, or a learner rank's DataParallel), or imports the trainer: the trainer, r1zero.critic and
r1zero.distributed all call into it.

Shapes: B prompts, G samples per prompt, N = B*G completion rows in group order, P prompt width (left-padded),
T completion width (right-padded); n, t for a micro-batch's rows and width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch

from r1zero import algorithms
from r1zero.models import PRECISIONS, autocast, completion_logprobs, left_padded

ADVANTAGE_EPS = 1e-6  # added to the group std in grpo advantages


# ---- the samples as tensors ------------------------------------------------------------------------------

PROMPT_FIELDS = ("prompt_ids", "prompt_mask")  # one row per prompt; every other tensor has one row per completion


@dataclass(frozen=True)
class Sequences:
    """A step's prompts and completions as padded tensors: what generation produced, before any scoring."""

    prompt_ids: torch.Tensor  # (B, P) left-padded prompts
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    group_index: torch.Tensor  # (N,) the prompt row each completion answers
    completion_ids: torch.Tensor  # (N, T) right-padded completions
    completion_mask: torch.Tensor  # (N, T) float, 1 on completion tokens
    sampled_mask: torch.Tensor | None = None  # (N, T) float, 1 on tokens the policy sampled, 0 on a tool's output
    # and on padding; None: every completion token was sampled (no tools)

    @property
    def policy_mask(self) -> torch.Tensor:
        """(N, T) the tokens the policy sampled: the only ones a loss, a KL, an advantage or a length counts."""
        return self.completion_mask if self.sampled_mask is None else self.sampled_mask

    def rows(self, index):
        """The completion rows `index` (a slice or index tensor) of every per-completion tensor; prompts are kept
        whole. Returns the same type (a Rollout's rows are a Rollout)."""
        picked = {f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)
                  if f.name not in PROMPT_FIELDS and getattr(self, f.name) is not None}
        return dataclasses.replace(self, **picked)

    def trimmed(self):
        """The same rows cut to their longest completion: the columns dropped are padding in every row, so no
        number changes (causal attention never looks right), only the work."""
        width = max(1, int(self.completion_mask.sum(dim=1).max()))
        if width == self.completion_ids.shape[1]:
            return self
        per_token = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in PROMPT_FIELDS
                     and getattr(self, f.name) is not None and getattr(self, f.name).dim() == 2}  # (n, T) fields
        return dataclasses.replace(self, **{name: value[:, :width] for name, value in per_token.items()})

    def to(self, device):
        """The same tensors on `device`."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if getattr(self, f.name) is not None})

    def lengths(self) -> torch.Tensor:
        """(N,) completion lengths in tokens, on the CPU (update_plan's input)."""
        return self.completion_mask.sum(dim=1).long().cpu()

    def logprobs(self, model, with_entropy: bool = False, chunk_tokens: int = 0,
                 single_pass: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, T) log-probabilities of these completions under `model` (and entropies, without gradient);
        chunk_tokens and single_pass: see models.completion_logprobs."""
        return completion_logprobs(model, self.prompt_ids, self.prompt_mask, self.group_index, self.completion_ids,
                                   self.completion_mask, with_entropy, chunk_tokens, single_pass)


@dataclass(frozen=True, kw_only=True)
class Rollout(Sequences):
    """Sequences with everything the update needs, built once (Rollout.of) when all of it is known."""

    advantages: torch.Tensor  # (N,) one per completion, or (N, T) one per token (GAE)
    loss_mask: torch.Tensor | None = None  # (N, T) tokens that count in the loss; None: policy_mask
    old_logprobs: torch.Tensor | None = None  # (N, T) under the generating policy; None: the current one (mu = 1)
    ref_logprobs: torch.Tensor | None = None  # (N, T) under the reference; only when the KL is a loss term
    old_values: torch.Tensor | None = None  # (N, T) the critic's values at generation time (PPO)
    returns: torch.Tensor | None = None  # (N, T) the critic's targets (PPO)
    correction_weights: torch.Tensor | None = None  # (N, T) rollout correction (TIS) on each token's policy loss

    @classmethod
    def of(cls, sequences: Sequences, **fields) -> "Rollout":
        return cls(**{f.name: getattr(sequences, f.name) for f in dataclasses.fields(Sequences)}, **fields)

    @property
    def token_mask(self) -> torch.Tensor:
        """(N, T) the tokens that count in the loss (never a tool's output)."""
        return self.policy_mask if self.loss_mask is None else self.loss_mask


def pack_sequences(prompts: list[list[int]], completions: list[list[int]], group_size: int, pad_id: int,
                   device, sampled_masks: list[list[int]] | None = None) -> Sequences:
    """Left-pad the B prompts into (B, P) and right-pad the N = B*G completions into (N, T); with tools, their
    sampled masks (one flag per completion token) into (N, T) too."""
    prompt_ids, prompt_mask = left_padded(prompts, pad_id)  # (B, P)
    completion_width = max(1, max(len(c) for c in completions))
    completion_ids = torch.full((len(completions), completion_width), pad_id, dtype=torch.long)  # (N, T)
    completion_mask = torch.zeros((len(completions), completion_width))  # (N, T)
    for i, completion in enumerate(completions):
        if completion:
            completion_ids[i, :len(completion)] = torch.tensor(completion)
            completion_mask[i, :len(completion)] = 1.0
    group_index = torch.arange(len(prompts)).repeat_interleave(group_size)  # (N,)
    sampled = None
    if sampled_masks is not None:
        sampled = torch.zeros_like(completion_mask)  # (N, T)
        for i, mask in enumerate(sampled_masks):
            sampled[i, :len(mask)] = torch.tensor(mask, dtype=sampled.dtype)
        sampled = sampled.to(device)
    return Sequences(prompt_ids.to(device), prompt_mask.to(device), group_index.to(device), completion_ids.to(device),
                     completion_mask.to(device), sampled)


def pack_rollout(prompts: list[list[int]], completions: list[list[int]], group_size: int, pad_id: int,
                 advantages: torch.Tensor, device, **fields) -> Rollout:
    """pack_sequences, with the given advantages (and any other Rollout field): a complete Rollout at once."""
    return Rollout.of(pack_sequences(prompts, completions, group_size, pad_id, device), advantages=advantages.to(device),
                      **fields)


@torch.no_grad()
def score_logprobs(model, sequences: Sequences, chunk: int, chunk_tokens: int = 0,
                   compute: torch.dtype | None = None, single_pass: bool = False) -> torch.Tensor:
    """(N, T) completion log-probabilities under `model`, without gradient, `chunk` rows at a time (and through
    the output head chunk_tokens tokens at a time; under autocast in `compute`)."""
    count = len(sequences.completion_ids)
    with autocast(model, compute):
        return torch.cat([sequences.rows(slice(start, start + chunk)).logprobs(model, False, chunk_tokens,
                                                                                single_pass)[0]
                          for start in range(0, count, chunk)])


@torch.no_grad()
def reference_logprobs(policy, reference, sequences: Sequences, chunk: int, chunk_tokens: int = 0,
                       compute: torch.dtype | None = None) -> torch.Tensor:
    """(N, T) log-probabilities under the reference: the frozen copy (which runs in its own dtype), or with LoRA
    (reference None) the policy with its adapters switched off (the base weights, which LoRA never changes)."""
    if reference is not None:
        return score_logprobs(reference, sequences, chunk, chunk_tokens)
    with policy.disable_adapter():
        return score_logprobs(policy, sequences, chunk, chunk_tokens, compute)


# ---- the engine's probabilities against the trainer's -----------------------------------------------------

class EngineGap(NamedTuple):
    """How the engine that sampled the batch differs from the trainer, and what the correction did."""

    loss_mask: torch.Tensor  # (N, T) the tokens left in the loss (MIS removes some)
    correction_weights: torch.Tensor | None  # (N, T) TIS's weights on the policy loss; None: no weights
    ratio_to: torch.Tensor  # (N, T) pi_old of the policy loss's ratio: the trainer's, or the sampler's (clip)
    mismatch: algorithms.LogprobMismatch  # |log pi_old - log pi_engine| over the completions' tokens
    corrected_fraction: float  # share of the loss's tokens truncated (TIS) or masked (MIS)
    ess: float  # Kish's effective sample size of the per-token ratios pi_old / pi_engine, as a share (1: on-policy)


def engine_gap(old_logprobs: torch.Tensor, engine_logprobs: list[list[float]], token_mask: torch.Tensor,
               sampled_mask: torch.Tensor, settings: "UpdateSettings",
               own_rows: torch.Tensor | None = None) -> EngineGap:
    """The mismatch between the trainer's log-probabilities of the policy it updates from (old_logprobs (N, T);
    decoupled PPO's proximal policy) and those of the policy that sampled (the engine's, one list per completion:
    vLLM's kernels, or older weights in asynchronous training), over the sampled tokens (sampled_mask (N, T): a
    tool's output has no engine log-probability), and settings.rollout_correction applied over token_mask (N, T).

    own_rows (N,) bool: rows sampled by these very weights with the trainer's own kernels (r1zero's engine at
    staleness 0), whose sampling policy is pi_old itself: their engine numbers are taken as old_logprobs, so their
    ratios are exactly 1 (the engine's own sums differ from the trainer's in the last bits)."""
    engine = torch.zeros_like(old_logprobs)  # (N, T)
    for row, values in enumerate(engine_logprobs):
        engine[row, :len(values)] = torch.tensor(values, dtype=engine.dtype)
    if own_rows is not None:
        engine = torch.where(own_rows[:, None].to(engine.device), old_logprobs, engine)  # (N, T)
    mismatch = algorithms.logprob_mismatch(old_logprobs, engine, sampled_mask)
    ess = algorithms.effective_sample_size(algorithms.engine_ratio(old_logprobs, engine, token_mask, "token"),
                                           token_mask)
    correction = settings.rollout_correction(old_logprobs, engine, token_mask, settings.rollout_correction_cap,
                                             settings.rollout_correction_level)
    weights = None if bool((correction.weights == 1).all()) else correction.weights  # all 1: the loss as it is
    corrected = float(correction.corrected.sum() / token_mask.sum().clamp(min=1))
    return EngineGap(correction.mask, weights, correction.ratio_to, mismatch, corrected, ess)


# ---- settings, resolved once -----------------------------------------------------------------------------

@dataclass(frozen=True)
class KLPenalty:
    """beta x KL(pi || pi_ref) per token, and where it goes: "loss" (added to the policy loss: GRPO, R1-Zero) or
    "reward" (taken off each token's reward before GAE: InstructGPT, TinyZero's PPO). The one place a run's KL is
    decided; None when beta is 0 (no reference model at all)."""

    coef: float
    estimator: algorithms.KLEstimator
    placement: str  # "loss" or "reward"

    @classmethod
    def from_config(cls, config) -> "KLPenalty | None":
        if config.kl_coef <= 0:
            return None
        return cls(config.kl_coef, algorithms.lookup(algorithms.KL_ESTIMATORS, config.kl_estimator, "KL estimator"),
                   config.kl_penalty)

    @property
    def in_loss(self) -> bool:
        return self.placement == "loss"

    @property
    def in_reward(self) -> bool:
        return self.placement == "reward"

    def logged(self, loss_kl: float, reward_kl: float | None) -> float:
        """The step's KL per token, from where the penalty acted: the loss term's (PolicyStats.kl, measured on the
        policy being updated) or the reward's (PPOAdvantages.reward_kl, on the generating policy; 0 during a
        step that computed none)."""
        return loss_kl if self.in_loss else (reward_kl or 0.0)


@dataclass(frozen=True)
class UpdateSettings:
    """What the update needs of the settings, with every name already looked up in its registry."""

    policy_loss: algorithms.PolicyLossFunction
    clip_low: float
    clip_high: float
    kl: KLPenalty | None
    aggregation: algorithms.LossAggregation
    max_new_tokens: int  # the constant aggregation's normaliser
    max_grad_norm: float  # 0: no clipping
    updates_per_batch: int
    minibatch_size: int  # 0: the whole batch
    microbatch_size: int  # 0: the whole minibatch, or microbatch_tokens
    microbatch_tokens: int  # 0: off
    logprob_chunk_tokens: int = 0  # tokens per chunk through the output head (0: the whole logits at once)
    compute: torch.dtype | None = None  # the autocast dtype of mixed precision, or None
    rollout_correction: algorithms.RolloutCorrectionFunction = algorithms.no_rollout_correction
    rollout_correction_cap: float = 2.0
    rollout_correction_level: str = "token"

    @classmethod
    def from_config(cls, config) -> "UpdateSettings":
        return cls(policy_loss=algorithms.lookup(algorithms.POLICY_LOSSES, config.policy_loss, "policy loss"),
                   clip_low=config.clip_low, clip_high=config.clip_high, kl=KLPenalty.from_config(config),
                   aggregation=algorithms.lookup(algorithms.LOSS_AGGREGATIONS, config.loss_aggregation,
                                                 "loss aggregation"),
                   max_new_tokens=config.max_new_tokens, max_grad_norm=config.max_grad_norm,
                   updates_per_batch=config.updates_per_batch, minibatch_size=config.minibatch_size,
                   microbatch_size=config.microbatch_size, microbatch_tokens=config.microbatch_tokens,
                   logprob_chunk_tokens=config.logprob_chunk_tokens, compute=PRECISIONS[config.dtype].compute,
                   rollout_correction=algorithms.lookup(algorithms.ROLLOUT_CORRECTIONS, config.rollout_correction,
                                                        "rollout correction"),
                   rollout_correction_cap=config.rollout_correction_cap,
                   rollout_correction_level=config.rollout_correction_level)

    def needs_old_logprobs(self, count: int, engine_logprobs: bool = False) -> bool:
        """Whether the generating policy's log-probabilities must be scored before the update: when the policy
        moves before the batch's last optimiser step (mu > 1, or several minibatches), the KL goes into the
        reward (it is measured on the generating policy), or an engine with its own copy of the weights (vLLM)
        sampled the batch (the trainer's probabilities are compared with the engine's)."""
        several_steps = self.updates_per_batch > 1 or (self.minibatch_size or count) < count
        return several_steps or (self.kl is not None and self.kl.in_reward) or engine_logprobs


# ---- the plan: minibatches and micro-batches ---------------------------------------------------------------

class Minibatch(NamedTuple):
    """One optimiser step: its rows of the rollout and, within those, the positions of each micro-batch."""

    rows: torch.Tensor  # (M,) rows of the rollout
    micro_batches: list[torch.Tensor]  # positions 0..M-1 of `rows`, one tensor per forward/backward


def update_plan(lengths: torch.Tensor, settings: UpdateSettings, generator: torch.Generator,
                device) -> list[Minibatch]:
    """updates_per_batch passes over the N rows (completion `lengths` (N,)) in shuffled minibatches, each one
    optimiser step. The policy and the critic follow the same plan.

    Micro-batches: microbatch_size rows each, in order; with microbatch_tokens > 0 (and microbatch_size 0), the
    minibatch's rows sorted longest first and packed into micro-batches of at most microbatch_tokens padded tokens
    (length_packed); otherwise the whole minibatch. Each micro-batch is cut to its longest row. The gradient is the
    same either way (the loss weights belong to the minibatch; tested)."""
    count = len(lengths)
    minibatch = settings.minibatch_size or count
    plan = []
    for _ in range(settings.updates_per_batch):
        order = torch.randperm(count, generator=generator) if minibatch < count else torch.arange(count)
        for start in range(0, count, minibatch):
            rows = order[start:start + minibatch]
            if settings.microbatch_size:
                micro = [torch.arange(m, min(m + settings.microbatch_size, len(rows)))
                         for m in range(0, len(rows), settings.microbatch_size)]
            elif settings.microbatch_tokens:
                micro = length_packed(lengths[rows], settings.microbatch_tokens)
            else:
                micro = [torch.arange(len(rows))]
            plan.append(Minibatch(rows.to(device), [positions.to(device) for positions in micro]))
    return plan


def length_packed(lengths: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """Positions 0..M-1 grouped into micro-batches of at most `budget` padded tokens (rows x the longest row),
    longest rows first; all of them in their own order when they fit in one."""
    longest = max(1, int(lengths.max()))
    if len(lengths) * longest <= budget:
        return [torch.arange(len(lengths))]
    groups, current, width = [], [], 1
    for position in torch.argsort(lengths, descending=True, stable=True).tolist():
        if current and (len(current) + 1) * width > budget:
            groups.append(current)
            current = []
        if not current:  # longest first: a micro-batch's first row sets its width
            width = max(1, int(lengths[position]))
        current.append(position)
    groups.append(current)
    return [torch.tensor(group) for group in groups]


# ---- the optimiser steps -------------------------------------------------------------------------------------

class StepTotals(NamedTuple):
    """What minibatch_steps returns: means over the optimiser steps applied (0 when none was)."""

    loss: float
    grad_norm: float
    token_means: dict[str, float]  # each token sum of micro_loss, divided by its minibatch's token count
    skipped_updates: int  # optimiser steps skipped because the loss or the gradient was not finite


MicroLoss = Callable[[Rollout, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


class OneProcess:
    """The update in one process: every row of a micro-batch is this process's, and its sums are already whole.
    r1zero.distributed.DataParallel is the same interface for rank r of K."""

    single_pass = False  # FSDP ranks run whole sequences through the root's forward (models.completion_logprobs)

    def share(self, rows: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
        """(the rows of a micro-batch this process works on, whether they are a zero-weight stand-in), or None
        to skip the micro-batch."""
        return rows, False

    def sum_over_ranks(self, parameters: list, sums: dict[str, float]) -> dict[str, float]:
        """The step's gradients and token sums over every process: here, already."""
        return sums

    def whole(self, norm: torch.Tensor) -> torch.Tensor:
        """The gradient norm clip_grad_norm_ returned, as one plain tensor: here, it is."""
        return norm


ONE_PROCESS = OneProcess()


def minibatch_steps(parameters: list, optimizer, rollout: Rollout, plan: list[Minibatch], aggregation,
                    max_new_tokens: int, max_grad_norm: float, micro_loss: MicroLoss, sum_names: tuple[str, ...],
                    mask=lambda rows: rows.token_mask, parallel=ONE_PROCESS) -> StepTotals:
    """One optimiser step per minibatch of `plan`, for the policy and for the critic alike.

    The aggregation weights are computed once per minibatch over `mask(minibatch)` and sliced for its micro-batches
    (each cut to its longest row), so gradient accumulation is exact. micro_loss(micro, weights (n, t)) returns the
    micro-batch's loss (a scalar to backpropagate) and its token sums named sum_names. A step whose gradient norm
    or loss is not finite is skipped and never reaches the weights.

    parallel: OneProcess, or r1zero.distributed.DataParallel when this process is rank r of K: it works on its
    share of every micro-batch, then gradients, loss and token sums are summed over the ranks before clipping, so
    every rank takes the same step as one process would on the whole minibatch."""
    totals = dict.fromkeys(("loss", "grad_norm", *sum_names), 0.0)
    optimiser_steps, skipped = 0, 0
    for rows_of_minibatch, micro_positions in plan:
        batch = rollout.rows(rows_of_minibatch)
        weights = aggregation(mask(batch), max_new_tokens)  # (M, T)
        optimizer.zero_grad(set_to_none=True)
        sums = dict.fromkeys(("loss", *sum_names), 0.0)
        for micro_rows in micro_positions:
            share = parallel.share(micro_rows)
            if share is None:
                continue
            rows, ghost = share  # ghost: FSDP's stand-in row for a rank with no rows (the collectives must match)
            micro = batch.rows(rows).trimmed()
            micro_weights = weights[rows][:, :micro.completion_ids.shape[1]]  # (n, t)
            loss, token_sums = micro_loss(micro, micro_weights * 0 if ghost else micro_weights)
            loss.backward()
            if not ghost:
                sums["loss"] += loss.item()
                for key, value in token_sums.items():
                    sums[key] += value
        sums = parallel.sum_over_ranks(parameters, sums)
        norm = parallel.whole(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm or float("inf")))
        if not torch.isfinite(norm) or not np.isfinite(sums["loss"]):
            optimizer.zero_grad(set_to_none=True)  # a non-finite step never reaches the weights
            skipped += 1
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # the gradients' memory is free until the next backward
        optimiser_steps += 1
        tokens = mask(batch).sum().clamp(min=1).item()
        totals["loss"] += sums.pop("loss")
        totals["grad_norm"] += norm.item()
        for key, value in sums.items():
            totals[key] += value / tokens
    done = max(1, optimiser_steps)
    return StepTotals(totals.pop("loss") / done, totals.pop("grad_norm") / done,
                      {key: value / done for key, value in totals.items()}, skipped)


@dataclass(frozen=True)
class PolicyStats:
    """The policy update's numbers, means over its optimiser steps; PolicyStats() is the zero value (a step that
    updates only the critic). kl: the loss's KL term per token (0 when the KL is not in the loss)."""

    loss: float = 0.0
    grad_norm: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    clip_fraction: float = 0.0  # share of tokens whose term the clip changed (PPO, GSPO: no gradient; CISPO: bounded)
    skipped_updates: int = 0


class LossTerms(NamedTuple):
    """A micro-batch's policy loss per token, before the aggregation weights."""

    per_token_loss: torch.Tensor  # (n, t) the surrogate (times TIS's weights) plus beta x KL when in the loss
    is_clipped: torch.Tensor  # (n, t) bool
    kl: torch.Tensor | None  # (n, t) the KL estimate to the reference, or None when the KL is not a loss term


def policy_loss_terms(logprobs: torch.Tensor, micro: Rollout, settings: UpdateSettings) -> LossTerms:
    """settings.policy_loss on the micro-batch's log-probabilities (n, t) under the policy being updated, over
    micro.token_mask (the sampled tokens: a tool's output never reaches a loss), TIS's weights, and beta x KL when
    the KL is a loss term. The loss is (per_token_loss * aggregation weights).sum()."""
    old = logprobs.detach() if micro.old_logprobs is None else micro.old_logprobs
    policy = settings.policy_loss(logprobs, old, micro.advantages, micro.token_mask, settings.clip_low,
                                  settings.clip_high)
    per_token = policy.per_token_loss  # (n, t)
    if micro.correction_weights is not None:  # TIS: the engine sampled from pi_engine, not pi_old
        per_token = per_token * micro.correction_weights
    penalty = None
    if settings.kl is not None and settings.kl.in_loss:
        penalty = settings.kl.estimator(logprobs, micro.ref_logprobs)  # (n, t)
        per_token = per_token + settings.kl.coef * penalty
    return LossTerms(per_token, policy.is_clipped, penalty)


def update_policy(model, optimizer, rollout: Rollout, plan: list[Minibatch], settings: UpdateSettings,
                  parallel=ONE_PROCESS) -> PolicyStats:
    """The policy's optimiser steps (minibatch_steps): per token, settings.policy_loss plus beta x KL when the KL
    is a loss term (the rollout then carries reference log-probabilities); also measures entropy, clip fraction
    and KL per token. parallel: see minibatch_steps."""
    kl = settings.kl if settings.kl is not None and settings.kl.in_loss else None
    if kl is not None and rollout.ref_logprobs is None:
        raise ValueError("the KL is a loss term, so the rollout needs ref_logprobs (reference_logprobs)")

    single_pass = parallel.single_pass  # FSDP: every rank runs the same forwards

    def micro_loss(micro: Rollout, weights: torch.Tensor):
        mask = micro.token_mask  # (n, t)
        with autocast(model, settings.compute):
            logprobs, entropy = micro.logprobs(model, True, settings.logprob_chunk_tokens, single_pass)  # (n, t)
        terms = policy_loss_terms(logprobs, micro, settings)
        token_sums = {"kl": 0.0, "entropy": (entropy * mask).sum().item(),
                      "clip_fraction": (terms.is_clipped.float() * mask).sum().item()}
        if terms.kl is not None:
            token_sums["kl"] = (terms.kl.detach() * mask).sum().item()
        return (terms.per_token_loss * weights).sum(), token_sums

    totals = minibatch_steps(list(model.parameters()), optimizer, rollout, plan, settings.aggregation,
                             settings.max_new_tokens, settings.max_grad_norm, micro_loss,
                             ("kl", "entropy", "clip_fraction"), parallel=parallel)
    return PolicyStats(totals.loss, totals.grad_norm, skipped_updates=totals.skipped_updates, **totals.token_means)


# ---- PPO's advantages ------------------------------------------------------------------------------------------

class PPOAdvantages(NamedTuple):
    """GAE's output for a rollout, and what the step logs of it."""

    advantages: torch.Tensor  # (N, T), whitened when asked
    old_values: torch.Tensor  # (N, T) the critic's values at generation time
    returns: torch.Tensor  # (N, T) the critic's targets
    reward_kl: float | None  # mean KL per token when it was taken off the rewards, else None
    value_mean: float
    explained_variance: float


def ppo_advantages(critic, sequences: Sequences, rewards: torch.Tensor, token_mask: torch.Tensor,
                   kl: KLPenalty | None, old_logprobs, ref_logprobs, gamma: float, lam: float, whiten: bool,
                   chunk: int) -> PPOAdvantages:
    """Advantages from the critic's values (critic.values(sequences, chunk): (N, T)) and GAE. The outcome reward
    (N,) sits on each response's last token; with the KL in the reward, beta x KL(old, ref) is taken off every
    token's reward. token_mask (N, T): the tokens whitening counts."""
    values = critic.values(sequences, chunk)  # (N, T)
    mask = sequences.policy_mask  # GAE steps over sampled tokens only: a tool's output is not an action
    token_rewards = algorithms.outcome_token_rewards(rewards, mask)  # (N, T)
    reward_kl = None
    if kl is not None and kl.in_reward:
        penalty = kl.estimator(old_logprobs, ref_logprobs)  # (N, T)
        reward_kl = float(algorithms.masked_mean(penalty, mask))
        token_rewards = token_rewards - kl.coef * penalty * mask
    result = algorithms.gae(token_rewards, values, mask, gamma, lam)
    advantages = algorithms.whiten(result.advantages, token_mask) if whiten else result.advantages  # (N, T)
    return PPOAdvantages(advantages, values, result.returns, reward_kl,
                         float(algorithms.masked_mean(values, mask)),
                         algorithms.explained_variance(values, result.returns, mask))

