"""The R1-Zero training loop: GRPO (and its family) with rule-based rewards, from a base model.

    r1zero train                                    # built-in base model, built-in task, CPU, a few minutes
    r1zero train --config recipes/r1_zero.yaml --model path/to/hf-model --dataset problems.jsonl
    r1zero train --resume runs/x                    # continue a stopped run from its newest checkpoint

One step, as in the DeepSeek-R1 paper (GRPO, Shao et al. 2024), each stage a function below on the Run that
start_run builds once:
  1-3. sample_and_score: B prompts in the R1-Zero template, G completions each from the current policy (the "old"
       policy of the ratio; r1zero's engine, or vLLM with its own copy of the weights), scored by rule-based
       rewards: accuracy of the final answer, tag format (r1zero.batch, with DAPO's dynamic sampling and overlong
       penalty). With max_staleness k the rollout workers generate steps ahead, from weights up to k versions old
       (r1zero.pipeline), and the update corrects for them (decoupled PPO)
  4.   make_rollout: reference and old log-probabilities, then advantages, each reward compared with the others
       of its group (or, for PPO, GAE with a critic); the Rollout the update reads (r1zero.update)
  5.   update_models: the policy mu times on the batch with its policy loss plus beta * KL to the reference (PPO:
       and the critic, r1zero.critic); publish_weights sends the new weights to vLLM or the rollout workers
  6.   step_metrics and log_step; every eval_every steps, evaluate_held_out on held-out problems
  7.   checkpoint_or_stop: every checkpoint_every steps (and on Ctrl-C) a checkpoint that `r1zero train --resume
       DIR` continues from exactly (r1zero.checkpoint); stop after max_nonfinite_steps non-finite steps in a row

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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from r1zero import algorithms
from r1zero import metric_names as names
from r1zero.batch import StepBatch, collect_batch
from r1zero.checkpoint import (SHARDS_FOLDER, TrainingInterrupted, TrainingState, TrainingStopped, capture_global_rng,
                               latest_checkpoint, load_checkpoint, load_optimizer_shards, refuse_existing_run,
                               rewind_metrics, save_checkpoint, write_text_atomically)
from r1zero.config import ConfigError, TrainConfig, to_yaml
from r1zero.critic import Critic, CriticStats, ValueModel
from r1zero.evaluation import evaluate
from r1zero.health import HealthMonitor, reflection_rate
from r1zero.memory import return_freed_memory, return_freed_memory_for
from r1zero.models import (PRECISIONS, context_length, load_model, load_policy, plain_state_dict, resolve_device,
                           save_model)
from r1zero.pipeline import Asynchronous, Synchronous, Taken, rollout_pipeline
from r1zero.preflight import prepare_run
from r1zero.rewards import RewardScorer, ScoringPool
from r1zero.rollout import RolloutEngine
from r1zero.rollout.tool_use import tool_metrics, tool_settings, void_flags, with_tools
from r1zero.rollout.transformers_engine import TransformersEngine
from r1zero.tasks import ProblemSource
from r1zero.templates import STOP_STRING, encode_prompts
from r1zero.tracking import MetricsLogger, Progress, console, quiet_libraries
from r1zero.update import (ADVANTAGE_EPS, EngineGap, PolicyStats, PPOAdvantages, Rollout, UpdateSettings,
                           engine_gap, pack_sequences, ppo_advantages, reference_logprobs, score_logprobs, update_plan,
                           update_policy)

if TYPE_CHECKING:  # Ray is imported only when a run asks for it
    from transformers import PreTrainedTokenizerBase

    from r1zero.distributed import Learners, RolloutWorkers


def train(config: TrainConfig, resume: bool = False, stop=None) -> Path:
    """Run training with validated settings; returns the output folder.

    resume: continue the run in config.output_dir from its newest complete checkpoint (`r1zero train --resume`);
    without one it starts over. stop: a checkpoint.StopSignals; once it has caught SIGINT or SIGTERM, the current
    step is finished, a checkpoint saved and TrainingInterrupted raised.
    """
    run = start_run(config, resume)
    try:
        if run.first_step == 1:  # the base model's numbers, before any update
            evaluate_held_out(run, 0)
        run.started = time.time()  # the time budget and the ETA count from here
        for step in range(run.first_step, config.max_steps + 1):
            clock = StepClock(run.device)
            taken = sample_and_score(run, step)  # 1-3
            batch = taken.batch
            clock.lap("generation")
            rollout, ppo, gap = make_rollout(run, batch, step)  # 4
            clock.lap("logprobs")
            update = update_models(run, rollout, step)  # 5
            clock.lap("update")
            sync = publish_weights(run, step, update)
            metrics = step_metrics(run, step, taken, ppo, gap, update, sync, clock)  # 6
            log_step(run, step, metrics)
            out_of_time = bool(config.time_budget_seconds) and run.elapsed() >= config.time_budget_seconds
            last = step == config.max_steps or out_of_time
            if (config.eval_every and step % config.eval_every == 0) or last:
                evaluate_held_out(run, step)
            checkpoint_or_stop(run, step, update.policy.skipped_updates > 0, last, stop)  # 7
            if out_of_time:
                run.progress.write(f"r1zero: time budget of {config.time_budget_seconds:.0f}s spent after step {step}")
                break
        save_model(run.policy, run.tokenizer, run.output_dir / "final")
    finally:
        run.close()
    console(f"saved {run.output_dir / 'final'}")
    return run.output_dir


# ---- setup --------------------------------------------------------------------------------------------------

def prompt_ids(examples, config: TrainConfig, tokenizer) -> list[list[int]]:
    """The token ids of each example's prompt in the run's template (with --tools and tool_prompt, the template's
    instruction says in one more sentence that the model may run Python: config.extra_instruction)."""
    return encode_prompts([example.prompt for example in examples], config.template, tokenizer,
                          config.extra_instruction())


@dataclass
class Run:
    """Everything a training run holds, built once by start_run; the stages read it and move it on."""

    config: TrainConfig
    output_dir: Path
    problems: ProblemSource
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None without a KL term, or with LoRA (the policy's adapters switched off)
    critic: Critic | None  # PPO
    engine: RolloutEngine  # rollouts without workers: r1zero's TransformersEngine or a VLLMEngine
    eval_engine: RolloutEngine  # held-out evaluation (eval_engine: the rollout engine, or r1zero's)
    scorer: RewardScorer
    settings: UpdateSettings
    advantage: algorithms.AdvantageEstimator | None  # None: GAE with the critic
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampling: torch.Generator  # evaluation's sampling (training samples from per-prompt seeds)
    shuffling: torch.Generator  # the minibatch order
    monitor: HealthMonitor
    logger: MetricsLogger
    progress: Progress
    held_out_prompts: list[list[int]]
    out_of_distribution_prompts: list[list[int]]  # empty: the task has no such split, or it is not evaluated
    first_step: int
    pipeline: Synchronous | Asynchronous  # where each step's batch comes from (r1zero.pipeline)
    workers: RolloutWorkers | None = None  # Ray rollout workers (rollout_workers >= 1)
    learners: Learners | None = None  # Ray learner ranks (train_processes >= 2)
    nonfinite_steps: int = 0  # steps in a row with skipped (non-finite) updates
    started: float = field(default_factory=time.time)  # when training started (train() sets it after step 0's
    # evaluation), for the time budget and the ETA

    def elapsed(self) -> float:
        return time.time() - self.started

    def close(self) -> None:
        """Close the progress bar and the metrics files; stop the scoring pool (its processes also exit with this
        one) and the Ray workers and ranks."""
        self.progress.close()
        self.pipeline.close()  # before the workers it waits on
        self.scorer.close()
        self.logger.close()
        self.engine.close()
        if self.eval_engine is not self.engine:
            self.eval_engine.close()
        for actors in (self.workers, self.learners):
            if actors is not None:
                actors.close()


def start_run(config: TrainConfig, resume: bool) -> Run:
    """Check everything, then load the models and build the run's objects; on resume, restore the checkpoint's
    state. Every check runs before any weights load or any file is written."""
    quiet_libraries()
    return_freed_memory()
    prepared = prepare_run(config)  # settings, files, data, prompts, memory
    problems, model_path, tokenizer, notices = (prepared.problems, prepared.model_path, prepared.tokenizer,
                                                prepared.warnings)
    for notice in notices:
        console(f"r1zero: warning: {notice}")
    output_dir, resume_from, state = open_output(config, resume)
    on_ray = bool(config.rollout_workers) or config.train_processes > 1
    if on_ray:  # join or start Ray before loading anything (Ray is imported only when asked for)
        from r1zero import distributed
        distributed.start_ray(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    policy, reference, critic = load_models(config, model_path, resume_from, device)
    scorer = RewardScorer(config.reward_weights, problems.accuracy_reward,
                          time_limit_seconds=config.reward_timeout_seconds, workers=config.reward_workers,
                          code_partial_credit=config.code_partial_credit,
                          code_test_timeout_seconds=config.code_test_timeout_seconds,
                          pool_factory=distributed.RayScoringPool if on_ray else ScoringPool)
    trainable = [parameter for parameter in policy.parameters() if parameter.requires_grad]  # LoRA: adapters only
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, config.warmup_steps)))
    sampling = torch.Generator(device=device).manual_seed(config.seed)
    shuffling = torch.Generator().manual_seed(config.seed + 1)
    monitor = HealthMonitor()
    shards = resume_from / SHARDS_FOLDER if state is not None and state.optimizer_shards else None
    sharded_ranks = config.train_processes > 1 and config.fsdp
    if state is not None:
        state.restore(optimizer, scheduler, problems, monitor, {"sampling": sampling, "shuffling": shuffling})
        if shards is not None and not sharded_ranks:  # FSDP's shards, put together for one process or replicas
            load_optimizer_shards(policy, optimizer, str(shards))
        if critic is not None:
            critic.load_state_dict(state.critic)
    first_step = state.step + 1 if state is not None else 1
    settings = UpdateSettings.from_config(config)
    workers = learners = None  # Ray rollout workers and learner ranks (r1zero.distributed)
    vllm = vllm_settings(config, model_path, prepared.longest_prompt) if config.rollout_engine == "vllm" else None
    engine, eval_engine = start_engines(config, policy, tokenizer, device, vllm, first_step)
    if config.rollout_workers:
        workers = distributed.RolloutWorkers(config.rollout_workers, policy, tokenizer, config, device, vllm)
        try:
            workers.publish(first_step - 1, policy)  # version v: the weights after step v's update
        except BaseException:
            workers.close()  # no actor left behind in a cluster that outlives this run
            raise
    if config.train_processes > 1:  # with FSDP the reference moves to the ranks, sharded
        learners = distributed.Learners(config.train_processes, policy, optimizer, config, settings, device,
                                        reference_on_ranks(config), reference, shards if sharded_ranks else None)
        optimizer.state.clear()  # the ranks hold AdamW's state now; this optimizer carries only the schedule
        reference = None if reference_on_ranks(config) else reference
    logger = start_logging(config, output_dir, resume, resume_from, state)

    def collect(step: int, rollout_engine) -> StepBatch:  # one step's batch, from either engine (r1zero.pipeline)
        return collect_batch(problems, lambda examples: prompt_ids(examples, config, tokenizer), rollout_engine,
                             scorer, tokenizer, config, step)

    in_flight = [StepBatch.from_state_dict(batch) for batch in (state.in_flight or [])] if state is not None else []
    pipeline = rollout_pipeline(config, collect, engine, workers, first_step, in_flight, policy)
    advantage = None if critic else algorithms.lookup(algorithms.ADVANTAGE_ESTIMATORS, config.advantage,
                                                       "advantage estimator")
    run = Run(config=config, output_dir=output_dir, problems=problems, tokenizer=tokenizer, device=device,
              policy=policy, reference=reference, critic=critic, engine=engine, eval_engine=eval_engine,
              scorer=scorer, settings=settings, advantage=advantage, optimizer=optimizer, scheduler=scheduler,
              sampling=sampling, shuffling=shuffling, monitor=monitor, logger=logger,
              progress=Progress(config.max_steps, start=first_step - 1),
              held_out_prompts=prompt_ids(problems.held_out, config, tokenizer),
              out_of_distribution_prompts=prompt_ids(problems.out_of_distribution, config, tokenizer)
              if config.eval_out_of_distribution else [],
              first_step=first_step, pipeline=pipeline, workers=workers, learners=learners)
    out_of_distribution = (f", {len(run.out_of_distribution_prompts)} out-of-distribution"
                           if run.out_of_distribution_prompts else "")
    run.progress.write(f"r1zero: {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M-parameter model from "
                       f"{model_path}, task {problems.name} ({len(problems.held_out)} held-out problems"
                       f"{out_of_distribution}), "
                       f"{config.max_steps} steps of {config.prompts_per_step}x{config.group_size} samples, "
                       f"output {output_dir}")
    return run


def open_output(config: TrainConfig, resume: bool) -> tuple[Path, Path | None, TrainingState | None]:
    """The output folder, and on resume its newest checkpoint and that checkpoint's state (files checked); a new
    run refuses a folder that already holds one."""
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
    return output_dir, resume_from, state


def start_engines(config: TrainConfig, policy, tokenizer, device, vllm, first_step: int):
    """(the rollout engine in this process, the evaluation's): r1zero's engine on the policy itself, or with
    rollout_engine vllm and no rollout workers a vLLM engine given the policy's weights as version first_step - 1
    (the weights after that step's update); evaluation uses the rollout engine unless eval_engine is r1zero."""
    tools = tool_settings(config)  # with --tools, both call them between turns (r1zero.rollout.tool_use)
    own = with_tools(TransformersEngine(policy, tokenizer, STOP_STRING, compute=PRECISIONS[config.dtype].compute),
                     tokenizer, tools)
    if vllm is None or config.rollout_workers:
        return own, own
    from r1zero.rollout.vllm_engine import VLLMEngine

    engine = with_tools(VLLMEngine(policy.config, policy.generation_config, tokenizer, vllm, device, STOP_STRING),
                        tokenizer, tools)
    engine.load_weights(plain_state_dict(policy), first_step - 1)
    return engine, engine if config.eval_engine == "rollout" else own


def vllm_settings(config: TrainConfig, model_path: Path, longest_prompt: int):
    """The vLLM engine's settings; its length limit, unless vllm_max_model_len is given: the longest measured
    prompt plus the longest completion (config.longest_completion), at least 512, at most the model's context."""
    from r1zero.rollout.vllm_engine import VLLMSettings

    length = config.vllm_max_model_len or max(512, longest_prompt + config.longest_completion())
    context = context_length(model_path)
    return VLLMSettings.from_config(config, min(length, context) if context else length)


def reference_on_ranks(config: TrainConfig) -> bool:
    """Whether the reference model is held on the FSDP learner ranks, sharded, instead of in this process."""
    return config.fsdp and config.train_processes > 1 and config.kl_coef > 0 and not config.lora_rank


def load_models(config: TrainConfig, model_path: Path, resume_from: Path | None, device):
    """The policy (from the checkpoint when resuming), the frozen reference (only with a KL term; with LoRA the
    policy with its adapters switched off is the reference: no second copy) and PPO's critic."""
    precision = PRECISIONS[config.dtype]
    policy = load_policy(model_path, resume_from, precision.parameters, device, config.lora_rank, config.lora_alpha,
                         config.lora_dropout, config.lora_target_modules, config.gradient_checkpointing)
    return_freed_memory_for(policy)
    reference = None
    # a new run whose reference lives on the FSDP ranks: it is the initial policy, which the ranks already
    # receive, so none is loaded here (on resume the ranks get it from here)
    if config.kl_coef > 0 and not config.lora_rank and not (reference_on_ranks(config) and resume_from is None):
        reference = load_model(model_path, precision.reference, device, trainable=False)
    critic = None
    if config.advantage == "gae":
        critic = Critic(ValueModel.from_base(model_path, precision.parameters, device, config.gradient_checkpointing),
                        config.critic_learning_rate, config.weight_decay, config.value_clip, precision.compute)
    return policy, reference, critic


def start_logging(config: TrainConfig, output_dir: Path, resume: bool, resume_from, state) -> MetricsLogger:
    """Write config.yaml; on resume, cut metrics.jsonl back to the checkpoint (lines written after it, or all,
    without one, are written again) and have TensorBoard hide the rest."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output_dir / "config.yaml", to_yaml(config))
    if resume:
        rewind_metrics(output_dir / "metrics.jsonl", state.metrics_lines if state else 0,
                       state.metrics_bytes if state else 0)
        console(f"r1zero: resuming from {resume_from} (step {state.step} of {config.max_steps})" if state else
                f"r1zero: {output_dir} has no complete checkpoint yet: starting the run over")
    purge_step = (state.step + 1 if state is not None else 0) if resume else None
    return MetricsLogger(output_dir, config.report_to, purge_step, config.project, config.run_name,
                         dataclasses.asdict(config))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_output_dir(config: TrainConfig) -> Path:
    name = Path(config.dataset).stem if config.dataset else config.task
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


# ---- 1-3. sample prompts, generate G completions each, score them ---------------------------------------------

def sample_and_score(run: Run, step: int) -> Taken:
    """B prompt groups, generated by the rollout workers or in this process, scored (DAPO: informative groups);
    asynchronous: generated ahead, taken from the pipeline."""
    run.policy.eval()
    run.engine.require_version(step - 1)  # vLLM in this process holds its own copy: is it the newest?
    taken = run.pipeline.take(step)
    run.policy.train()
    return taken


# ---- 4. log-probabilities and advantages: the rollout ----------------------------------------------------------

def make_rollout(run: Run, batch: StepBatch, step: int) -> tuple[Rollout, PPOAdvantages | None, EngineGap | None]:
    """The batch as a complete Rollout: reference log-probabilities when there is a KL term, the policy's before
    this update (old_logprobs; decoupled PPO's proximal policy) when the update is off-policy or an engine with its
    own weights, or older weights (max_staleness), sampled the batch (UpdateSettings.needs_old_logprobs), that
    engine's gap to the trainer and the rollout correction (engine_gap), and the advantages: within each group, or
    GAE with the critic (whose numbers come back too)."""
    config, device, kl = run.config, run.device, run.settings.kl
    sequences = pack_sequences(batch.prompts, batch.completions, config.group_size, run.engine.pad_id, device,
                               batch.sampled_mask)
    count = len(batch.completions)
    chunk = config.microbatch_size or config.minibatch_size or count
    chunk_tokens, compute = run.settings.logprob_chunk_tokens, run.settings.compute
    ref_logprobs = None
    if kl is not None and run.learners is not None and run.learners.sharded_reference:
        ref_logprobs = run.learners.reference_logprobs(sequences, chunk_tokens).to(device)
    elif kl is not None:
        ref_logprobs = reference_logprobs(run.policy, run.reference, sequences, chunk, chunk_tokens, compute)
    old_logprobs = None
    if run.settings.needs_old_logprobs(count, batch.engine_logprobs is not None):
        old_logprobs = score_logprobs(run.policy, sequences, chunk, chunk_tokens, compute)
    sampled = sequences.policy_mask  # (N, T) the tokens the policy sampled (a tool's output: 0)
    loss_mask = None
    if config.mask_truncated:  # DAPO's overlong filtering: cut-off responses do not count in the loss
        stopped = torch.tensor(batch.stopped, dtype=sampled.dtype, device=device)  # (N,)
        loss_mask = sampled * stopped[:, None]  # (N, T)
    if config.drop_void_turns and batch.tool_calls is not None:  # SimpleTIR: void-turn completions get no weight
        kept = torch.tensor([not void for void in void_turns(run, batch)], dtype=sampled.dtype, device=device)
        loss_mask = (sampled if loss_mask is None else loss_mask) * kept[:, None]  # (N, T)
    gap = None
    if batch.engine_logprobs is not None:  # vLLM or older weights: measure their gap to the trainer, correct it
        own = None  # r1zero's engine with this step's weights: the trainer's own policy, ratio exactly 1
        if config.rollout_engine == "r1zero":
            own = torch.tensor([lag == 0 for lag in batch.staleness(step - 1)])
        gap = engine_gap(old_logprobs, batch.engine_logprobs, sampled if loss_mask is None else loss_mask, sampled,
                         run.settings, own)
        loss_mask, old_logprobs = gap.loss_mask, gap.ratio_to
    reward = batch.reward_matrix(config.group_size)  # (B, G)
    ppo, critic_fields = None, {}
    if run.critic is None:
        advantages = run.advantage(reward, ADVANTAGE_EPS).flatten().to(device)  # (N,)
    else:
        ppo = ppo_advantages(run.critic, sequences, reward.flatten().to(device),
                             sampled if loss_mask is None else loss_mask, kl, old_logprobs,
                             ref_logprobs, config.gae_gamma, config.gae_lambda, config.whiten_advantages, chunk)
        advantages, critic_fields = ppo.advantages, {"old_values": ppo.old_values, "returns": ppo.returns}
    rollout = Rollout.of(sequences, advantages=advantages, loss_mask=loss_mask, old_logprobs=old_logprobs,
                         ref_logprobs=ref_logprobs if kl is not None and kl.in_loss else None,
                         correction_weights=gap.correction_weights if gap else None, **critic_fields)
    return rollout, ppo, gap


# ---- 5. update the policy (and the critic), then the rollout workers' weights --------------------------------

class StepUpdate(NamedTuple):
    policy: PolicyStats
    critic: CriticStats | None  # None without a critic
    weights: object  # the learners' new weights in Ray's object store (for the workers), or None


def update_models(run: Run, rollout: Rollout, step: int) -> StepUpdate:
    """The policy's optimiser steps, in this process or on the learner ranks, then the critic's on the same plan.
    During the critic's warm-up the policy (and its learning-rate schedule) waits for useful values."""
    plan = update_plan(rollout.lengths(), run.settings, run.shuffling, run.device)
    weights = None
    if run.critic is not None and step <= run.config.critic_warmup_steps:
        policy = PolicyStats()
    elif run.learners:  # K ranks; the new weights are loaded into this process's policy too
        policy, weights = run.learners.update(rollout, plan, run.optimizer.param_groups[0]["lr"], run.policy)
        with warnings.catch_warnings():  # this optimizer only carries the schedule; the ranks' ones step
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            run.scheduler.step()
    else:
        policy = update_policy(run.policy, run.optimizer, rollout, plan, run.settings)
        run.scheduler.step()
    critic = run.critic.update(rollout, plan, run.settings) if run.critic is not None else None
    return StepUpdate(policy, critic, weights)


def publish_weights(run: Run, step: int, update: StepUpdate) -> dict:
    """The next rollouts must come from the new weights: into the vLLM engine in this process, or to the rollout
    workers; returns the step's weight-sync metrics."""
    if run.engine.holds_weights:  # vLLM in this process (start_engines: never beside workers)
        run.engine.load_weights(plain_state_dict(run.policy), step)
        return {"time/weight_sync_seconds": run.engine.load_seconds}
    if not run.workers:
        return {}
    run.pipeline.publish(step, run.policy, update.weights)  # asynchronous: no waiting for the workers
    return {"ray/rollout_worker_restarts": run.workers.take_restarts(),
            "time/weight_sync_seconds": run.workers.publish_seconds}


# ---- 6. log ----------------------------------------------------------------------------------------------------

class StepClock:
    """Seconds since the step started, and the length of each named phase (lap). On a GPU each lap first waits
    for the kernels queued so far, so that a phase's GPU time counts in that phase and not in the next."""

    def __init__(self, device: torch.device | None = None):
        self.device = device if device is not None and device.type == "cuda" else None
        self.started = self.last = time.time()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        if self.device is not None:
            torch.cuda.synchronize(self.device)
        now = time.time()
        self.phases[phase], self.last = now - self.last, now

    def seconds(self) -> float:
        return time.time() - self.started


def step_metrics(run: Run, step: int, taken: Taken, ppo: PPOAdvantages | None, gap: EngineGap | None,
                 update: StepUpdate, sync: dict, clock: StepClock) -> dict:
    """The step's record of metrics.jsonl (every key is documented in metric_names.METRICS)."""
    batch = taken.batch
    reward = batch.reward_matrix(run.config.group_size)  # (B, G)
    rewards, lengths, seconds = batch.rewards, batch.sampled_lengths(), clock.seconds()
    kl = run.settings.kl
    critic, engine = {}, {}
    if gap is not None:
        engine = {names.LOGPROB_DIFF_MEAN: gap.mismatch.mean, names.LOGPROB_DIFF_MAX: gap.mismatch.max,
                  names.CORRECTED_FRACTION: gap.corrected_fraction}
    overlap = {}
    if run.config.max_staleness:
        staleness = batch.staleness(step - 1)
        overlap = {names.STALENESS_MEAN: sum(staleness) / len(staleness), names.STALENESS_MAX: max(staleness),
                   names.ESS: gap.ess if gap is not None else 1.0,
                   names.LEARNER_IDLE: taken.waited / max(seconds, 1e-9),
                   names.GENERATOR_IDLE: taken.generator_idle_fraction, names.DROPPED_BATCHES: taken.dropped}
    if ppo is not None:
        critic = {"critic/value_mean": ppo.value_mean, "critic/explained_variance": ppo.explained_variance,
                  "critic/value_loss": update.critic.value_loss, "critic/grad_norm": update.critic.grad_norm,
                  "critic/value_clip_fraction": update.critic.value_clip_fraction}
    return {
        names.REWARD_MEAN: float(reward.mean()),
        **{f"{names.REWARD_PREFIX}{name}": sum(values) / len(values) for name, values in rewards.components.items()},
        **rewards.health,  # reward_health/<name>/timeouts, /parse_failures, /exceptions: counts this step
        names.RESPONSE_LENGTH: sum(lengths) / len(lengths),
        names.TRUNCATED_FRACTION: 1 - sum(batch.stopped) / len(lengths),
        names.REFLECTION_RATE: reflection_rate(batch.texts, tuple(run.config.reflection_words)),
        names.KL: 0.0 if kl is None else kl.logged(update.policy.kl, ppo.reward_kl if ppo else None),
        names.ENTROPY: update.policy.entropy,
        names.CLIP_FRACTION: update.policy.clip_fraction,
        names.LOSS: update.policy.loss,
        names.GRAD_NORM: update.policy.grad_norm,
        names.SKIPPED_UPDATES: update.policy.skipped_updates,
        names.ZERO_STD_FRACTION: float((reward.max(dim=1).values == reward.min(dim=1).values).float().mean()),
        names.LEARNING_RATE: run.scheduler.get_last_lr()[0],
        "time/step_seconds": seconds,
        "time/generation_seconds": clock.phases["generation"],
        "time/logprobs_seconds": clock.phases["logprobs"],  # reference and old log-probs, advantages
        "time/update_seconds": clock.phases["update"],
        "throughput/tokens_per_second": sum(lengths) / seconds,
        **batch.counts,  # dynamic_sampling/...
        **critic,
        **(tool_metrics(batch.tool_calls, batch.tool_seconds, void_turns(run, batch))
           if batch.tool_calls is not None else {}),  # tools/... with tools
        **engine,  # rollout/... with vLLM or max_staleness
        **overlap,  # async/... with max_staleness
        **sync,  # ray/... with rollout workers, time/weight_sync_seconds with vLLM
    }


def void_turns(run: Run, batch: StepBatch) -> list[bool]:
    """(N,) whether each completion ended in a void turn (r1zero.rollout.tool_use.is_void)."""
    return void_flags(batch.completions, batch.sampled_mask, batch.tool_calls, run.tokenizer, tool_settings(run.config))


def log_step(run: Run, step: int, metrics: dict) -> None:
    """Health alerts, metrics.jsonl and TensorBoard, the progress bar."""
    alerts = run.monitor.update(step, metrics)
    if run.config.group_size == 1:  # one sample per prompt: every "group" has zero variance by construction
        alerts = [alert for alert in alerts if alert.name != "no_learning_signal"]
    metrics[names.ALERT_COUNT] = len(alerts)
    if alerts:
        metrics[names.ALERTS] = [alert._asdict() for alert in alerts]
    run.logger.log(step, metrics)
    for alert in alerts:
        run.progress.write(f"ALERT step {step} {alert.name}: {alert.message}")
    run.progress.step(step, {
        "reward": f"{metrics[names.REWARD_MEAN]:.3f}",
        "accuracy": f"{metrics.get(names.REWARD_PREFIX + 'accuracy', float('nan')):.3f}",
        "format": f"{metrics.get(names.REWARD_FORMAT, float('nan')):.3f}",
        "len": f"{metrics[names.RESPONSE_LENGTH]:.1f}",
        "kl": f"{metrics[names.KL]:.4f}",
        "tok/s": f"{metrics['throughput/tokens_per_second']:.0f}",
        "s/step": f"{metrics['time/step_seconds']:.2f}",
    }, eta_seconds=run.elapsed() / (step - run.first_step + 1) * (run.config.max_steps - step))


def evaluate_held_out(run: Run, step: int) -> None:
    """Greedy accuracy, pass@k, maj@K and format on the held-out problems, and on the out-of-distribution ones
    when the task has them; their samples to samples/ (and samples_ood/)."""
    config = run.config
    run.policy.eval()
    started = time.time()
    evaluation = evaluate(run.eval_engine, run.tokenizer, run.held_out_prompts, run.problems.held_out,
                          run.problems.accuracy_reward, config.eval_samples, config.temperature,
                          config.max_new_tokens, run.sampling)
    metrics = dict(evaluation.metrics)
    evaluation.write_samples(run.output_dir / "samples" / f"step_{step:06d}.jsonl")  # for `r1zero report`
    run.logger.samples(step, evaluation.samples)
    summary = (f"eval  step {step:4d}  greedy {metrics['eval/accuracy_greedy']:.3f}  "
               f"pass@1 {metrics['eval/pass@1']:.3f}  format {metrics['eval/format']:.3f}")
    if run.out_of_distribution_prompts:
        # its own generator, seeded by the step: the held-out evaluations draw exactly what they would without it
        harder = evaluate(run.eval_engine, run.tokenizer, run.out_of_distribution_prompts,
                          run.problems.out_of_distribution, run.problems.accuracy_reward, config.eval_samples,
                          config.temperature, config.max_new_tokens,
                          torch.Generator(device=run.device).manual_seed(config.seed * 1_000_003 + step),
                          prefix=names.EVAL_OOD_PREFIX)
        metrics |= harder.metrics
        harder.write_samples(run.output_dir / "samples_ood" / f"step_{step:06d}.jsonl")
        summary += f"  ood pass@1 {metrics[names.EVAL_OOD_PREFIX + 'pass@1']:.3f}"
    metrics["time/eval_seconds"] = time.time() - started
    run.logger.log(step, metrics)
    run.progress.write(f"{summary}  ({metrics['time/eval_seconds']:.0f}s)")
    run.policy.train()


# ---- 7. checkpoint, or stop ------------------------------------------------------------------------------------

def checkpoint_or_stop(run: Run, step: int, skipped_updates: bool, last: bool, stop) -> None:
    """A checkpoint when one is due, at the last step or after Ctrl-C, never at a step whose update was not
    finite; TrainingStopped after max_nonfinite_steps such steps in a row, TrainingInterrupted after Ctrl-C."""
    config = run.config
    run.nonfinite_steps = run.nonfinite_steps + 1 if skipped_updates else 0
    interrupted = stop is not None and stop.requested is not None and not last  # the last step: just finish
    due = (config.checkpoint_every and step % config.checkpoint_every == 0) or last
    saved = save_run_checkpoint(run, step) if (due or interrupted) and run.nonfinite_steps == 0 else None
    newest = f"the newest checkpoint is {latest_checkpoint(run.output_dir) or 'none (no checkpoint yet)'}"
    if run.nonfinite_steps >= config.max_nonfinite_steps:
        raise TrainingStopped(nonfinite_diagnosis(step, run.nonfinite_steps, config) + f"; {newest}")
    if interrupted:
        where = f"saved {saved}" if saved else f"no checkpoint at this step (its update was not finite); {newest}"
        raise TrainingInterrupted(f"stopped after step {step} of {config.max_steps} by "
                                  f"{signal.Signals(stop.requested).name}: {where}. Continue with: r1zero train "
                                  f"--resume {run.output_dir}", stop.requested)


def save_run_checkpoint(run: Run, step: int) -> Path:
    """The checkpoint of step `step`: with FSDP learner ranks each rank writes its shards of the optimiser state
    beside it (nothing is gathered); replicated ranks send rank 0's; in one process the optimizer's own.
    Asynchronous: with the batches in flight, taken first (the producer's draws are then in the data position)."""
    in_flight = [batch.state_dict() for batch in run.pipeline.in_flight()] or None
    lines, size = run.logger.position()
    generators = {"sampling": run.sampling.get_state(), "shuffling": run.shuffling.get_state()}
    sharded = run.learners is not None and run.learners.fsdp
    optimizer_state = run.learners.optimizer_state(run.optimizer) if run.learners and not sharded else \
        run.optimizer.state_dict()  # sharded: the driver's, which holds only the schedule
    snapshot = TrainingState(step, optimizer_state, run.scheduler.state_dict(), run.problems.state_dict(),
                             run.monitor.state_dict(), generators, capture_global_rng(), lines, size,
                             critic=run.critic.state_dict() if run.critic else None,
                             optimizer_shards=run.learners.world if sharded else 0, in_flight=in_flight)
    return save_checkpoint(run.output_dir, snapshot, run.policy, run.tokenizer, run.config.keep_checkpoints,
                           run.learners.save_optimizer if sharded else None)


def nonfinite_diagnosis(step: int, count: int, config: TrainConfig) -> str:
    """Why the run stopped after `count` steps in a row with non-finite updates, and what to try. (Rewards are
    checked finite by the scorer, so the loss or the gradient overflowed.)"""
    return (f"stopped at step {step}: {count} steps in a row (max_nonfinite_steps {config.max_nonfinite_steps}) had "
            f"a NaN or infinite loss or gradient, so their updates were skipped and the weights are those of step "
            f"{step - count}. Likely causes: dtype {config.dtype} (float16 overflows; use bfloat16 or float32), "
            f"learning_rate {config.learning_rate} too high, max_grad_norm {config.max_grad_norm} (0 disables "
            f"clipping). Start a new run from the checkpoint's weights (--model CHECKPOINT) with safer settings")
