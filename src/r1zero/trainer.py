"""The R1-Zero training loop: GRPO (and its family) with rule-based rewards, from a base model.

    r1zero train                                    # built-in base model, built-in task, CPU, a few minutes
    r1zero train --config recipes/r1_zero.yaml --model path/to/hf-model --dataset problems.jsonl
    r1zero train --resume runs/x                    # continue a stopped run from its newest checkpoint

One step, as in the DeepSeek-R1 paper (GRPO, Shao et al. 2024):
  1. sample B prompts and wrap each in the R1-Zero template
  2. generate G completions per prompt with the current policy (the "old" policy of the ratio)
  3. score each completion with rule-based rewards: accuracy of the final answer, tag format
     (steps 1-3 live in r1zero.batch, with DAPO's dynamic sampling and overlong penalty)
  4. advantages: each reward compared with the others of its group (or, for PPO, GAE with a critic)
  5. update the policy mu times on the batch with the clipped surrogate, minus beta * KL to the reference
     (PPO: and the critic, r1zero.critic)
  6. log; every eval_every steps, evaluate on held-out problems
  7. every checkpoint_every steps (and on Ctrl-C) save a checkpoint that `r1zero train --resume DIR` continues
     from exactly (r1zero.checkpoint); stop after max_nonfinite_steps steps in a row with non-finite updates

Shapes: B prompts, G samples per prompt, N = B*G sequences, P prompt width, T completion width.
Deliberate departures from the paper, all settings: the KL term defaults to 0 for the tiny built-in model
(the R1-Zero recipe sets 0.001); the built-in recipe weights format 0.5 besides accuracy 1.0 (the paper gives
no weights).
"""

from __future__ import annotations

import dataclasses
import random
import signal
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from r1zero import algorithms
from r1zero.checkpoint import (TrainingInterrupted, TrainingState, TrainingStopped, capture_global_rng,
                               latest_checkpoint, load_checkpoint, refuse_existing_run, rewind_metrics,
                               save_checkpoint, write_text_atomically)
from r1zero.batch import collect_batch
from r1zero.config import ConfigError, TrainConfig, to_yaml
from r1zero.critic import Critic, ValueModel, explained_variance
from r1zero.evaluation import evaluate
from r1zero.example import Example
from r1zero.models import completion_logprobs, load_model, load_policy, resolve_device, save_model
from r1zero.preflight import prepare_run
from r1zero.rewards import RewardScorer, ScoringPool
from r1zero.rollout.transformers_engine import TransformersEngine
from r1zero.templates import STOP_STRING, build_prompt
from r1zero.health import HealthMonitor, reflection_rate
from r1zero.tracking import MetricsLogger, Progress, console

ADVANTAGE_EPS = 1e-6  # added to the group std in grpo advantages


@dataclass
class Rollout:
    """One step's samples, ready for the update. N = B*G completion rows in group order."""

    prompt_ids: torch.Tensor  # (B, P) left-padded prompts
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    group_index: torch.Tensor  # (N,) the prompt row each completion answers
    completion_ids: torch.Tensor  # (N, T) right-padded completions
    completion_mask: torch.Tensor  # (N, T) float, 1 on completion tokens
    advantages: torch.Tensor  # (N,) one per completion, or (N, T) one per token (GAE)
    old_logprobs: torch.Tensor | None = None  # (N, T) under the generating policy; None: same as current
    ref_logprobs: torch.Tensor | None = None  # (N, T) under the reference model; None without a KL loss term
    loss_mask: torch.Tensor | None = None  # (N, T) tokens that count in the loss; None: completion_mask
    old_values: torch.Tensor | None = None  # (N, T) the critic's values at generation time (PPO)
    returns: torch.Tensor | None = None  # (N, T) the critic's targets (PPO)

    ROW_FIELDS = ("group_index", "completion_ids", "completion_mask", "advantages", "old_logprobs", "ref_logprobs",
                  "loss_mask", "old_values", "returns")

    def rows(self, index) -> "Rollout":
        """The completion rows `index` (a slice or index tensor); prompts are kept whole."""
        picked = {name: None if getattr(self, name) is None else getattr(self, name)[index] for name in self.ROW_FIELDS}
        return dataclasses.replace(self, **picked)

    def trimmed(self) -> "Rollout":
        """The same rows cut to their longest completion: the columns dropped are padding in every row, so no
        number changes (causal attention never looks right), only the work."""
        width = max(1, int(self.completion_mask.sum(dim=1).max()))
        if width == self.completion_ids.shape[1]:
            return self
        per_token = {name: getattr(self, name) for name in self.ROW_FIELDS
                     if getattr(self, name) is not None and getattr(self, name).dim() == 2}  # (n, T) fields
        return dataclasses.replace(self, **{name: value[:, :width] for name, value in per_token.items()})

    @property
    def token_mask(self) -> torch.Tensor:
        """(N, T) the tokens that count in the loss."""
        return self.completion_mask if self.loss_mask is None else self.loss_mask

    def to(self, device) -> "Rollout":
        """The same rollout with every tensor on `device`."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{name: None if value is None else value.to(device)
                                            for name, value in moved.items()})

    def logprobs(self, model, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, T) log-probabilities of these completions under `model` (and entropies)."""
        return completion_logprobs(model, self.prompt_ids, self.prompt_mask, self.group_index, self.completion_ids,
                                   self.completion_mask, with_entropy)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pack_rollout(prompts: list[list[int]], completions: list[list[int]], group_size: int, pad_id: int,
                 advantages: torch.Tensor, device: torch.device) -> Rollout:
    """Left-pad the B prompts into (B, P) and right-pad the N = B*G completions into (N, T)."""
    prompt_width = max(len(p) for p in prompts)
    completion_width = max(1, max(len(c) for c in completions))
    prompt_ids = torch.full((len(prompts), prompt_width), pad_id, dtype=torch.long)  # (B, P)
    prompt_mask = torch.zeros_like(prompt_ids)  # (B, P)
    for i, prompt in enumerate(prompts):
        prompt_ids[i, prompt_width - len(prompt):] = torch.tensor(prompt)
        prompt_mask[i, prompt_width - len(prompt):] = 1
    completion_ids = torch.full((len(completions), completion_width), pad_id, dtype=torch.long)  # (N, T)
    completion_mask = torch.zeros((len(completions), completion_width))  # (N, T)
    for i, completion in enumerate(completions):
        if completion:
            completion_ids[i, :len(completion)] = torch.tensor(completion)
            completion_mask[i, :len(completion)] = 1.0
    group_index = torch.arange(len(prompts)).repeat_interleave(group_size)  # (N,)
    return Rollout(prompt_ids.to(device), prompt_mask.to(device), group_index.to(device), completion_ids.to(device),
                   completion_mask.to(device), advantages.to(device))


@torch.no_grad()
def score_logprobs(model, rollout: Rollout, chunk: int) -> torch.Tensor:
    """Completion log-probabilities under `model` without gradient, `chunk` rows at a time. (N, T)"""
    count = len(rollout.completion_ids)
    return torch.cat([rollout.rows(slice(start, start + chunk)).logprobs(model)[0] for start in range(0, count, chunk)])


def update_plan(lengths: torch.Tensor, config: TrainConfig, generator: torch.Generator, device) -> list:
    """updates_per_batch passes over the N rows (completion `lengths` (N,)) in shuffled minibatches: a list of
    (minibatch rows (M,), [micro-batches: positions within those M rows]); each minibatch is one optimiser step.
    The policy and the critic follow the same plan.

    Micro-batches: microbatch_size rows each, in order; with microbatch_tokens > 0 (and microbatch_size 0), the
    minibatch's rows sorted longest first and packed into micro-batches of at most microbatch_tokens padded tokens
    (length_packed); otherwise the whole minibatch. Each micro-batch is cut to its longest row. The gradient is the
    same either way (the loss weights belong to the minibatch; tested)."""
    count = len(lengths)
    minibatch = config.minibatch_size or count
    plan = []
    for _ in range(config.updates_per_batch):
        order = torch.randperm(count, generator=generator) if minibatch < count else torch.arange(count)
        for start in range(0, count, minibatch):
            rows = order[start:start + minibatch]
            if config.microbatch_size:
                micro = [torch.arange(m, min(m + config.microbatch_size, len(rows)))
                         for m in range(0, len(rows), config.microbatch_size)]
            elif config.microbatch_tokens:
                micro = length_packed(lengths[rows], config.microbatch_tokens)
            else:
                micro = [torch.arange(len(rows))]
            plan.append((rows.to(device), [positions.to(device) for positions in micro]))
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


def minibatch_steps(parameters: list, optimizer, rollout: Rollout, plan: list, config: TrainConfig, micro_loss,
                    sum_names: tuple[str, ...], mask=lambda rows: rows.token_mask, parallel=None) -> dict:
    """One optimiser step per minibatch of `plan` (see update_plan), for the policy and for the critic alike.

    The aggregation weights are computed once per minibatch over `mask(minibatch)` and sliced for its micro-batches
    (each cut to its longest row), so gradient accumulation is exact. micro_loss(micro, weights (m, t)) returns the
    micro-batch's loss (a scalar to backpropagate) and a dict of token sums named sum_names. A step whose gradient
    norm or loss is not finite is skipped and never reaches the weights.

    parallel (r1zero.distributed.DataParallel): this process is rank r of K; it works on the r-th of K slices of
    every micro-batch, then gradients, loss and token sums are summed over the ranks before clipping, so every rank
    takes the same step as one process would on the whole minibatch. Returns the mean over applied steps of "loss",
    "grad_norm" and each token sum divided by the minibatch's token count, and "skipped_updates"."""
    aggregation = algorithms.lookup(algorithms.LOSS_AGGREGATIONS, config.loss_aggregation, "loss aggregation")
    totals: dict[str, float] = {"loss": 0.0, "grad_norm": 0.0}
    optimiser_steps, skipped = 0, 0
    for rows_of_minibatch, micro_positions in plan:
        batch = rollout.rows(rows_of_minibatch)
        weights = aggregation(mask(batch), config.max_new_tokens)  # (M, T)
        optimizer.zero_grad(set_to_none=True)
        sums = dict.fromkeys(("loss", *sum_names), 0.0)
        for rows in micro_positions:
            if parallel is not None:
                rows = rows.tensor_split(parallel.world)[parallel.rank]  # this rank's share
                if not len(rows):
                    continue
            micro = batch.rows(rows).trimmed()
            loss, token_sums = micro_loss(micro, weights[rows][:, :micro.completion_ids.shape[1]])
            loss.backward()
            sums["loss"] += loss.item()
            for key, value in token_sums.items():
                sums[key] += value
        if parallel is not None:
            sums = parallel.sum_over_ranks(parameters, sums)
        for key in sums:  # every metric is reported, 0 when no step was applied
            totals.setdefault(key, 0.0)
        norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm or float("inf"))
        if not torch.isfinite(norm) or not np.isfinite(sums["loss"]):
            optimizer.zero_grad(set_to_none=True)  # a non-finite step never reaches the weights
            skipped += 1
            continue
        optimizer.step()
        optimiser_steps += 1
        tokens = mask(batch).sum().clamp(min=1).item()
        totals["loss"] += sums.pop("loss")
        totals["grad_norm"] += norm.item()
        for key, value in sums.items():
            totals[key] += value / tokens
    done = max(1, optimiser_steps)
    return {key: value / done for key, value in totals.items()} | {"skipped_updates": skipped}


def update_policy(model, optimizer, rollout: Rollout, config: TrainConfig, plan: list, parallel=None) -> dict:
    """The policy's steps (minibatch_steps): per token, the clipped surrogate plus beta * KL when the rollout
    carries reference log-probabilities; also measures entropy, clip fraction and KL per token. parallel: see
    minibatch_steps."""
    kl_estimator = algorithms.lookup(algorithms.KL_ESTIMATORS, config.kl_estimator, "KL estimator")

    def micro_loss(micro: Rollout, weights: torch.Tensor):
        mask = micro.token_mask  # (m, t)
        logprobs, entropy = micro.logprobs(model, with_entropy=True)  # (m, t)
        old = logprobs.detach() if micro.old_logprobs is None else micro.old_logprobs
        policy = algorithms.clipped_surrogate_loss(logprobs, old, micro.advantages, config.clip_low, config.clip_high)
        per_token = policy.per_token_loss  # (m, t)
        token_sums = {"kl": 0.0, "entropy": (entropy * mask).sum().item(),
                      "clip_fraction": (policy.is_clipped.float() * mask).sum().item()}
        if micro.ref_logprobs is not None:
            kl = kl_estimator(logprobs, micro.ref_logprobs)  # (m, t)
            per_token = per_token + config.kl_coef * kl
            token_sums["kl"] = (kl.detach() * mask).sum().item()
        return (per_token * weights).sum(), token_sums

    return minibatch_steps(list(model.parameters()), optimizer, rollout, plan, config, micro_loss,
                           ("kl", "entropy", "clip_fraction"), parallel=parallel)


def ppo_advantages(critic: Critic, rollout: Rollout, rewards: torch.Tensor, kl_estimator, config: TrainConfig,
                   chunk: int) -> dict:
    """Fill rollout.advantages (N, T), old_values and returns from the critic's values and GAE. The outcome reward
    (N,) sits on each response's last token; with kl_penalty "reward", beta x KL is taken off every token's
    reward. Returns metrics: the mean KL and the critic's values and explained variance."""
    values = critic.values(rollout, chunk)  # (N, T)
    mask = rollout.completion_mask
    token_rewards = algorithms.outcome_token_rewards(rewards, mask)  # (N, T)
    metrics = {}
    if config.kl_coef > 0 and config.kl_penalty == "reward":  # the trainer scored old and ref log-probs for this
        kl = kl_estimator(rollout.old_logprobs, rollout.ref_logprobs)  # (N, T)
        metrics["kl"] = float(algorithms.masked_mean(kl, mask))
        token_rewards = token_rewards - config.kl_coef * kl * mask
    result = algorithms.gae(token_rewards, values, mask, config.gae_gamma, config.gae_lambda)
    rollout.advantages = (algorithms.whiten(result.advantages, rollout.token_mask) if config.whiten_advantages
                          else result.advantages)  # (N, T)
    rollout.old_values, rollout.returns = values, result.returns
    metrics["critic/value_mean"] = float(algorithms.masked_mean(values, mask))
    metrics["critic/explained_variance"] = explained_variance(values, result.returns, mask)
    return metrics


@torch.no_grad()
def reference_logprobs(policy, reference, rollout: Rollout, chunk: int) -> torch.Tensor:
    """(N, T) log-probabilities under the reference: the frozen copy, or with LoRA the policy with its adapters
    switched off (the base weights, which LoRA never changes)."""
    if reference is not None:
        return score_logprobs(reference, rollout, chunk)
    with policy.disable_adapter():
        return score_logprobs(policy, rollout, chunk)


def default_output_dir(config: TrainConfig) -> Path:
    name = Path(config.dataset).stem if config.dataset else config.task
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def train(config: TrainConfig, resume: bool = False, stop=None) -> Path:
    """Run training with validated settings; returns the output folder.

    resume: continue the run in config.output_dir from its newest complete checkpoint (`r1zero train --resume`);
    without one it starts over. stop: a checkpoint.StopSignals; once it has caught SIGINT or SIGTERM, the current
    step is finished, a checkpoint saved and TrainingInterrupted raised.
    """
    # ---- setup: every check runs before any weights load or any file is written --------------------
    problems, model_path, tokenizer, notices = prepare_run(config)  # settings, data, tokenizer, prompt lengths
    for notice in notices:
        console(f"r1zero: warning: {notice}")
    output_dir = Path(config.output_dir) if config.output_dir else default_output_dir(config)
    resume_from = latest_checkpoint(output_dir) if resume else None
    state = load_checkpoint(resume_from) if resume_from else None  # checks its files
    if state is not None and state.step > config.max_steps:
        raise ConfigError(f"max_steps: {config.max_steps} is below the step of {resume_from} ({state.step}); give "
                          f"--max-steps {state.step} or more")
    if resume and state is not None:
        rewind_metrics(output_dir / "metrics.jsonl", state.metrics_lines, state.metrics_bytes, truncate=False)
    elif resume and (output_dir / "final").exists():
        raise ConfigError(f"--resume {output_dir}: it has a final model but no checkpoint (written before r1zero had "
                          f"checkpoints, or they were deleted), so it cannot continue; start a new run from its "
                          f"weights with --model {output_dir / 'final'}")
    if not resume:
        refuse_existing_run(output_dir)  # a new run never appends to another run's metrics
    on_ray = bool(config.rollout_workers) or config.train_processes > 1
    if on_ray:  # join or start Ray before loading anything (Ray is imported only when asked for)
        from r1zero import distributed
        distributed.start_ray(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    policy = load_policy(model_path, resume_from, config, device)
    kl_in_loss = config.kl_coef > 0 and config.kl_penalty == "loss"
    kl_in_reward = config.kl_coef > 0 and config.kl_penalty == "reward"  # PPO only (validated)
    reference = None  # with LoRA the reference is the policy with its adapters switched off: no second copy
    if config.kl_coef > 0 and not config.lora_rank:
        reference = load_model(model_path, config.dtype, device, trainable=False)
    critic = None
    if config.advantage == "gae":
        critic = Critic(ValueModel.from_base(model_path, config.dtype, device), config.critic_learning_rate,
                        config.weight_decay)
    engine = TransformersEngine(policy, tokenizer, STOP_STRING)  # evaluation, and rollouts without workers
    scorer = RewardScorer(config.reward_weights, problems.accuracy_reward,
                          time_limit_seconds=config.reward_timeout_seconds, workers=config.reward_workers,
                          code_partial_credit=config.code_partial_credit,
                          code_test_timeout_seconds=config.code_test_timeout_seconds,
                          pool_factory=distributed.RayScoringPool if on_ray else ScoringPool)
    advantage_fn = None if critic else algorithms.lookup(algorithms.ADVANTAGE_ESTIMATORS, config.advantage,
                                                          "advantage estimator")
    kl_estimator = algorithms.lookup(algorithms.KL_ESTIMATORS, config.kl_estimator, "KL estimator")
    trainable = [parameter for parameter in policy.parameters() if parameter.requires_grad]  # LoRA: adapters only
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, config.warmup_steps)))
    sampling = torch.Generator(device=device).manual_seed(config.seed)
    shuffling = torch.Generator().manual_seed(config.seed + 1)
    monitor = HealthMonitor()
    first_step = 1
    if state is not None:
        state.restore(optimizer, scheduler, problems, monitor, {"sampling": sampling, "shuffling": shuffling})
        if critic is not None:
            critic.load_state_dict(state.critic)
        first_step = state.step + 1
    workers = learners = None  # Ray rollout workers and learner ranks (r1zero.distributed)
    if config.rollout_workers:
        workers = distributed.RolloutWorkers(config.rollout_workers, policy, tokenizer, config, device)
        workers.publish(first_step - 1, policy)  # version v: the weights after step v's update
    if config.train_processes > 1:
        learners = distributed.Learners(config.train_processes, policy, optimizer, config, device)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output_dir / "config.yaml", to_yaml(config))
    if resume:  # lines written after the checkpoint (or all, without one) are written again
        rewind_metrics(output_dir / "metrics.jsonl", state.metrics_lines if state else 0,
                       state.metrics_bytes if state else 0)
        console(f"r1zero: resuming from {resume_from} (step {state.step} of {config.max_steps})" if state else
                f"r1zero: {output_dir} has no complete checkpoint yet: starting the run over")
    purge_step = (first_step if state is not None else 0) if resume else None  # TensorBoard hides the rest
    logger = MetricsLogger(output_dir, config.tensorboard, purge_step=purge_step)

    def checkpoint(step: int) -> Path:
        lines, size = logger.position()
        generators = {"sampling": sampling.get_state(), "shuffling": shuffling.get_state()}
        optimizer_state = learners.optimizer_state() if learners else optimizer.state_dict()
        snapshot = TrainingState(step, optimizer_state, scheduler.state_dict(), problems.state_dict(),
                                 monitor.state_dict(), generators, capture_global_rng(), lines, size,
                                 critic=critic.state_dict() if critic else None)
        return save_checkpoint(output_dir, snapshot, policy, tokenizer, config.keep_checkpoints)

    def encode(examples: list[Example]) -> list[list[int]]:
        return [tokenizer(build_prompt(e.prompt, config.template, tokenizer), add_special_tokens=False)["input_ids"]
                for e in examples]

    held_out_prompts = encode(problems.held_out)
    console(f"r1zero: {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M-parameter model from {model_path}, "
            f"task {problems.name} ({len(problems.held_out)} held-out problems), {config.max_steps} steps of "
            f"{config.prompts_per_step}x{config.group_size} samples, output {output_dir}")

    def run_evaluation(step: int) -> None:
        policy.eval()
        started = time.time()
        evaluation = evaluate(engine, tokenizer, held_out_prompts, problems.held_out, problems.accuracy_reward,
                              config.eval_samples, config.temperature, config.max_new_tokens, sampling)
        metrics = {**evaluation.metrics, "time/eval_seconds": time.time() - started}
        logger.log(step, metrics)
        evaluation.write_samples(output_dir / "samples" / f"step_{step:06d}.jsonl")  # for `r1zero report`
        progress.write(f"eval  step {step:4d}  greedy {metrics['eval/accuracy_greedy']:.3f}  "
                f"pass@1 {metrics['eval/pass@1']:.3f}  format {metrics['eval/format']:.3f}  "
                f"({metrics['time/eval_seconds']:.0f}s)")
        policy.train()

    progress = Progress(config.max_steps, start=first_step - 1)

    def release() -> None:
        """Close the progress bar and the metrics files; stop the scoring pool (its processes also exit with this
        one) and the Ray workers and ranks."""
        progress.close()
        scorer.close()
        logger.close()
        for actors in (workers, learners):
            if actors is not None:
                actors.close()
    if state is None:
        run_evaluation(0)
    started_training = time.time()
    nonfinite_steps = 0  # steps in a row with skipped (non-finite) updates
    for step in range(first_step, config.max_steps + 1):
        step_started = time.time()
        # ---- 1-3. sample prompts, generate G completions each, score them (DAPO: keep informative groups) --
        policy.eval()
        batch = collect_batch(problems, encode, workers or engine, scorer, tokenizer, config, step)
        policy.train()
        generation_seconds = time.time() - step_started
        rewards, texts = batch.rewards, batch.texts
        reward = batch.reward_matrix(config.group_size)  # (B, G)
        count = len(batch.completions)
        rollout = pack_rollout(batch.prompts, batch.completions, config.group_size, engine.pad_id,
                               torch.zeros(count), device)
        if config.mask_truncated:  # DAPO's overlong filtering: cut-off responses do not count in the loss
            stopped = torch.tensor(batch.stopped, dtype=rollout.completion_mask.dtype, device=device)
            rollout.loss_mask = rollout.completion_mask * stopped[:, None]  # (N, T)
        chunk = config.microbatch_size or config.minibatch_size or count
        logprobs_started = time.time()
        if config.kl_coef > 0:
            rollout.ref_logprobs = reference_logprobs(policy, reference, rollout, chunk)
        if config.updates_per_batch > 1 or (config.minibatch_size or count) < count or kl_in_reward:
            rollout.old_logprobs = score_logprobs(policy, rollout, chunk)  # the generating policy, frozen

        # ---- 4. advantages: within each group, or GAE with the critic -------------------------------------
        extra = {}
        if critic is None:
            rollout.advantages = advantage_fn(reward, ADVANTAGE_EPS).flatten().to(device)  # (N,)
        else:
            extra = ppo_advantages(critic, rollout, reward.flatten().to(device), kl_estimator, config, chunk)
        if not kl_in_loss:
            rollout.ref_logprobs = None  # in the reward (PPO) or only measured: not a loss term

        # ---- 5. policy update (and critic update) ---------------------------------------------------------
        update_started = time.time()
        plan = update_plan(rollout.completion_mask.sum(dim=1).long().cpu(), config, shuffling, device)
        if critic is not None and step <= config.critic_warmup_steps:
            update = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "grad_norm": 0.0,
                      "skipped_updates": 0}  # critic warm-up: the policy (and its lr schedule) waits for useful values
        elif learners:  # K ranks; the new weights are loaded into this process's policy too
            update, new_weights = learners.update(rollout, plan, optimizer.param_groups[0]["lr"], policy)
            with warnings.catch_warnings():  # this optimizer only carries the schedule; the ranks' ones step
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                scheduler.step()
        else:
            update = update_policy(policy, optimizer, rollout, config, plan)
            scheduler.step()
        if critic is not None:
            critic.model.train()
            critic_update = minibatch_steps(list(critic.model.parameters()), critic.optimizer, rollout, plan, config,
                                            critic.micro_loss(config.value_clip), ("value_clip_fraction",),
                                            mask=lambda rows: rows.completion_mask)
            extra.update({"critic/value_loss": critic_update["loss"], "critic/grad_norm": critic_update["grad_norm"],
                          "critic/value_clip_fraction": critic_update["value_clip_fraction"]})

        update_seconds = time.time() - update_started
        if workers:  # the next rollouts must come from these weights
            workers.publish(step, policy, new_weights if learners else None)
            extra.update({"ray/rollout_worker_restarts": workers.take_restarts(),
                          "time/weight_sync_seconds": workers.publish_seconds})

        # ---- 6. log -----------------------------------------------------------------------------------
        seconds = time.time() - step_started
        lengths = [len(c) for c in batch.completions]
        metrics = {
            "reward/mean": float(reward.mean()),
            **{f"reward/{name}": sum(values) / len(values) for name, values in rewards.components.items()},
            **rewards.health,  # reward_health/<name>/timeouts, /parse_failures, /exceptions: counts this step
            "response/length_mean": sum(lengths) / len(lengths),
            "response/truncated_fraction": 1 - sum(batch.stopped) / len(lengths),
            "response/reflection_rate": reflection_rate(texts, tuple(config.reflection_words)),
            "kl": update["kl"] if kl_in_loss else extra.pop("kl", 0.0),
            "entropy": update["entropy"],
            "clip_fraction": update["clip_fraction"],
            "loss": update["loss"],
            "grad_norm": update["grad_norm"],
            "skipped_updates": update["skipped_updates"],
            "zero_std_fraction": float((reward.max(dim=1).values == reward.min(dim=1).values).float().mean()),
            "learning_rate": scheduler.get_last_lr()[0],
            "time/step_seconds": seconds,
            "time/generation_seconds": generation_seconds,
            "time/logprobs_seconds": update_started - logprobs_started,  # reference and old log-probs, advantages
            "time/update_seconds": update_seconds,
            "throughput/tokens_per_second": sum(lengths) / seconds,
            **batch.counts,  # dynamic_sampling/...
            **extra,  # critic/... (PPO)
        }
        alerts = monitor.update(step, metrics)
        if config.group_size == 1:  # one sample per prompt: every "group" has zero variance by construction
            alerts = [alert for alert in alerts if alert.name != "no_learning_signal"]
        metrics["health/alerts"] = len(alerts)
        if alerts:
            metrics["alerts"] = [alert._asdict() for alert in alerts]
        logger.log(step, metrics)
        for alert in alerts:
            progress.write(f"ALERT step {step} {alert.name}: {alert.message}")
        elapsed = time.time() - started_training
        progress.step(step, {
            "reward": f"{metrics['reward/mean']:.3f}",
            "accuracy": f"{metrics.get('reward/accuracy', float('nan')):.3f}",
            "format": f"{metrics.get('reward/format', float('nan')):.3f}",
            "len": f"{metrics['response/length_mean']:.1f}",
            "kl": f"{metrics['kl']:.4f}",
            "tok/s": f"{metrics['throughput/tokens_per_second']:.0f}",
            "s/step": f"{seconds:.2f}",
        }, eta_seconds=elapsed / (step - first_step + 1) * (config.max_steps - step))
        out_of_time = bool(config.time_budget_seconds) and elapsed >= config.time_budget_seconds
        last = step == config.max_steps or out_of_time
        if (config.eval_every and step % config.eval_every == 0) or last:
            run_evaluation(step)

        # ---- 7. checkpoint, or stop -----------------------------------------------------------------------
        nonfinite_steps = nonfinite_steps + 1 if update["skipped_updates"] else 0
        interrupted = stop is not None and stop.requested is not None and not last  # the last step: just finish
        due = (config.checkpoint_every and step % config.checkpoint_every == 0) or last
        saved = checkpoint(step) if (due or interrupted) and nonfinite_steps == 0 else None  # never a bad step
        if nonfinite_steps >= config.max_nonfinite_steps or interrupted:
            release()
            newest = f"the newest checkpoint is {latest_checkpoint(output_dir) or 'none (no checkpoint yet)'}"
            if nonfinite_steps >= config.max_nonfinite_steps:
                raise TrainingStopped(nonfinite_diagnosis(step, nonfinite_steps, config) + f"; {newest}")
            where = f"saved {saved}" if saved else f"no checkpoint at this step (its update was not finite); {newest}"
            raise TrainingInterrupted(f"stopped after step {step} of {config.max_steps} by "
                                      f"{signal.Signals(stop.requested).name}: {where}. Continue with: r1zero train "
                                      f"--resume {output_dir}", stop.requested)
        if out_of_time:
            progress.write(f"r1zero: time budget of {config.time_budget_seconds:.0f}s spent after step {step}")
            break

    # ---- save ---------------------------------------------------------------------------------------------
    save_model(policy, tokenizer, output_dir / "final")
    release()
    console(f"saved {output_dir / 'final'}")
    return output_dir


def nonfinite_diagnosis(step: int, count: int, config: TrainConfig) -> str:
    """Why the run stopped after `count` steps in a row with non-finite updates, and what to try. (Rewards are
    checked finite by the scorer, so the loss or the gradient overflowed.)"""
    return (f"stopped at step {step}: {count} steps in a row (max_nonfinite_steps {config.max_nonfinite_steps}) had "
            f"a NaN or infinite loss or gradient, so their updates were skipped and the weights are those of step "
            f"{step - count}. Likely causes: dtype {config.dtype} (float16 overflows; use bfloat16 or float32), "
            f"learning_rate {config.learning_rate} too high, max_grad_norm {config.max_grad_norm} (0 disables "
            f"clipping). Start a new run from the checkpoint's weights (--model CHECKPOINT) with safer settings")
