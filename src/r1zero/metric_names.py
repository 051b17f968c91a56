"""The names of the metrics that more than one module reads: the trainer writes them to metrics.jsonl, the health
monitor watches them and the report plots them; and METRICS, every key metrics.jsonl can hold, with when it is
written and what it means. docs/reference/metrics.md is generated from METRICS (python -m r1zero.docgen), and a
test checks that every key a run writes matches one of its patterns.
"""

import re

REWARD_PREFIX = "reward/"  # reward/mean, then reward/<component> (reward/accuracy, reward/format, ...)
REWARD_MEAN = "reward/mean"
REWARD_FORMAT = "reward/format"
RESPONSE_LENGTH = "response/length_mean"
TRUNCATED_FRACTION = "response/truncated_fraction"
REFLECTION_RATE = "response/reflection_rate"
ZERO_STD_FRACTION = "zero_std_fraction"  # share of groups whose rewards are all equal: no signal

KL = "kl"  # per token, to the reference; 0 without a KL term
ENTROPY = "entropy"  # nats per token of the updated policy
CLIP_FRACTION = "clip_fraction"
LOSS = "loss"
GRAD_NORM = "grad_norm"
SKIPPED_UPDATES = "skipped_updates"  # optimiser steps skipped because the loss or gradient was not finite
LEARNING_RATE = "learning_rate"

CRITIC_PREFIX = "critic/"
EVAL_PREFIX = "eval/"  # eval/accuracy_greedy, eval/pass@k, eval/maj@K, eval/format, eval/response_length
EVAL_RESPONSE_LENGTH = "eval/response_length"
EVAL_OOD_PREFIX = "eval/ood/"  # the same numbers on the out-of-distribution split (the built-in sums task)
ALERTS = "alerts"  # the alerts that started at a step, as records
ALERT_COUNT = "health/alerts"

# With an engine that holds its own copy of the weights (vLLM): |log pi_old - log pi_engine| over the completions'
# tokens, and the share of the loss's tokens the rollout correction truncated (tis) or masked (mis)
LOGPROB_DIFF_MEAN = "rollout/logprob_diff_mean"
LOGPROB_DIFF_MAX = "rollout/logprob_diff_max"
CORRECTED_FRACTION = "rollout/corrected_fraction"

# Asynchronous training (max_staleness >= 1): how old the samples were, the correction's effective sample size,
# and how much each side waited
STALENESS_MEAN = "async/staleness_mean"
STALENESS_MAX = "async/staleness_max"
ESS = "async/ess"
LEARNER_IDLE = "async/learner_idle_fraction"
GENERATOR_IDLE = "async/generator_idle_fraction"
DROPPED_BATCHES = "async/dropped_batches"

TOOLS_PREFIX = "tools/"  # with --tools: calls, their outcomes, the sandbox's time, SimpleTIR's void turns

# ---- every key of metrics.jsonl -------------------------------------------------------------------------------
# (pattern, when it is written, meaning). In a pattern, <component> is a reward name (accuracy, format, your own),
# <k> a power of two up to eval_samples, <K> eval_samples itself; eval/ood/<metric> repeats every eval/ key.

EVERY_STEP = "every training step"
EVERY_EVALUATION = "every held-out evaluation: step 0 (before any update), every eval_every steps, the last step"

METRICS: tuple[tuple[str, str, str], ...] = (
    ("step", "every record", "the training step the record belongs to; evaluation records share their step's number"),
    # ---- rewards
    (REWARD_MEAN, EVERY_STEP, "mean total reward of the step's completions (the weighted sum of reward_weights)"),
    (REWARD_PREFIX + "<component>", EVERY_STEP,
     "mean of one reward component before weighting (reward/accuracy, reward/format, reward/overlong, ...)"),
    ("reward_health/<component>/timeouts", EVERY_STEP,
     "completions whose reward was stopped at reward_timeout_seconds this step (scored 0)"),
    ("reward_health/<component>/parse_failures", EVERY_STEP,
     "completions whose answer could not be parsed by the checker this step (scored 0)"),
    ("reward_health/<component>/exceptions", EVERY_STEP,
     "completions whose reward function raised, or whose scoring worker died, this step (scored 0)"),
    (ZERO_STD_FRACTION, EVERY_STEP, "share of groups whose rewards are all equal: they carry no learning signal"),
    # ---- responses
    (RESPONSE_LENGTH, EVERY_STEP, "mean completion length in tokens the policy sampled (a tool's output not counted)"),
    (TRUNCATED_FRACTION, EVERY_STEP, "share of completions cut off at max_new_tokens (no stop string, no EOS)"),
    (REFLECTION_RATE, EVERY_STEP, "share of completions whose <think> holds one of reflection_words"),
    # ---- the update
    (KL, EVERY_STEP, "KL to the reference model per token, by kl_estimator (0 when kl_coef is 0)"),
    (ENTROPY, EVERY_STEP, "entropy of the policy per token, in nats, over the completions' tokens"),
    (CLIP_FRACTION, EVERY_STEP, "share of loss tokens whose ratio was clipped"),
    (LOSS, EVERY_STEP, "the policy loss (surrogate plus KL term), averaged over the step's optimiser steps"),
    (GRAD_NORM, EVERY_STEP, "the policy gradient's norm before clipping, averaged over the step's optimiser steps"),
    (SKIPPED_UPDATES, EVERY_STEP, "optimiser steps skipped because the loss or the gradient was not finite"),
    (LEARNING_RATE, EVERY_STEP, "the learning rate after the step's scheduler step"),
    # ---- time
    ("time/step_seconds", EVERY_STEP, "wall time of the step"),
    ("time/generation_seconds", EVERY_STEP,
     "sampling the completions and scoring them (with max_staleness: waiting for the batch generated ahead)"),
    ("time/logprobs_seconds", EVERY_STEP, "reference and old log-probabilities, and the advantages"),
    ("time/update_seconds", EVERY_STEP, "the policy update (and the critic's)"),
    ("throughput/tokens_per_second", EVERY_STEP, "completion tokens sampled per second of the whole step"),
    # ---- health
    (ALERT_COUNT, EVERY_STEP, "how many health alerts started at this step"),
    (ALERTS, "a step at which an alert starts",
     "the alerts that started, as records of name, step, message (cause and what to try)"),
    # ---- optional parts
    ("dynamic_sampling/rounds", "with dynamic_sampling", "generation rounds the step took to fill its batch"),
    ("dynamic_sampling/kept_groups", "with dynamic_sampling", "groups with differing rewards in the batch"),
    ("dynamic_sampling/dropped_groups", "with dynamic_sampling", "all-equal groups generated and set aside"),
    ("dynamic_sampling/filled_groups", "with dynamic_sampling",
     "set-aside groups put back to fill the batch when max_sampling_rounds ran out"),
    (CRITIC_PREFIX + "value_mean", "with advantage gae", "mean value the critic predicts over completion tokens"),
    (CRITIC_PREFIX + "explained_variance", "with advantage gae",
     "1 - Var(returns - values) / Var(returns): how much of the returns the critic explains"),
    (CRITIC_PREFIX + "value_loss", "with advantage gae", "the critic's clipped value loss"),
    (CRITIC_PREFIX + "grad_norm", "with advantage gae", "the critic's gradient norm before clipping"),
    (CRITIC_PREFIX + "value_clip_fraction", "with advantage gae", "share of value predictions clipped by value_clip"),
    (LOGPROB_DIFF_MEAN, "with rollout_engine vllm or max_staleness",
     "mean |log pi_old - log pi_engine| over completion tokens: the sampling policy's gap to the trainer"),
    (LOGPROB_DIFF_MAX, "with rollout_engine vllm or max_staleness", "the largest such gap of the step"),
    (CORRECTED_FRACTION, "with rollout_engine vllm or max_staleness, and a rollout_correction",
     "share of loss tokens the correction truncated (tis) or masked (mis); clip: whose ratio to the sampler is "
     "outside [1/cap, cap] at the update's start"),
    (STALENESS_MEAN, "with max_staleness", "mean of (learner's version - sampling version) over the step's samples"),
    (STALENESS_MAX, "with max_staleness", "the oldest sample's lag in versions (never above max_staleness)"),
    (ESS, "with max_staleness",
     "Kish's effective sample size of the ratios pi_old / pi_sampling over the loss tokens, as a share: 1 on-policy"),
    (LEARNER_IDLE, "with max_staleness", "share of the step the learner waited for its batch"),
    (GENERATOR_IDLE, "with max_staleness",
     "share of the wall time since the previous step's batch that the rollout workers were not generating"),
    (DROPPED_BATCHES, "with max_staleness", "batches dropped as more than max_staleness versions old (drop_stale)"),
    ("time/weight_sync_seconds", "with rollout_engine vllm or rollout_workers",
     "loading the new weights into the engine, or publishing them to the workers"),
    ("ray/rollout_worker_restarts", "with rollout_workers", "rollout workers replaced this step after dying"),
    (TOOLS_PREFIX + "calls_mean", "with tools", "tool calls per completion (refused calls included)"),
    (TOOLS_PREFIX + "completions_with_call", "with tools", "share of completions that called the tool at least once"),
    (TOOLS_PREFIX + "error_rate", "with tools",
     "share of calls that raised, did not parse, or had no start marker (status error)"),
    (TOOLS_PREFIX + "timeout_rate", "with tools", "share of calls stopped at tool_timeout_seconds (status timeout)"),
    (TOOLS_PREFIX + "seconds", "with tools",
     "wall time generation waited for the sandbox this step (rollout workers: summed over the workers)"),
    (TOOLS_PREFIX + "void_turn_rate", "with tools",
     "share of completions that called the tool and whose last turn holds neither a call nor an answer"),
    # ---- evaluation
    (EVAL_PREFIX + "accuracy_greedy", EVERY_EVALUATION, "share of held-out problems answered right greedily"),
    (EVAL_PREFIX + "pass@<k>", EVERY_EVALUATION,
     "unbiased pass@k over eval_samples samples at temperature (pass@1: mean correctness of a sample)"),
    (EVAL_PREFIX + "maj@<K>", EVERY_EVALUATION, "share of problems whose majority-vote answer is right"),
    (EVAL_PREFIX + "format", EVERY_EVALUATION, "share of sampled answers in the strict tag format"),
    (EVAL_RESPONSE_LENGTH, EVERY_EVALUATION, "mean sampled completion length in tokens"),
    (EVAL_OOD_PREFIX + "<metric>", "every evaluation, with eval_out_of_distribution and a task that has the split",
     "each eval/ metric on the out-of-distribution split (the sums task: five-number sums)"),
    ("time/eval_seconds", EVERY_EVALUATION, "wall time of the evaluation (both splits)"),
)


def metric_pattern(pattern: str) -> re.Pattern[str]:
    """A pattern of METRICS as a regular expression: each <placeholder> stands for one or more characters (a
    <component> may hold no slash, a <metric> may)."""
    parts = re.split(r"(<[a-zA-Z]+>)", pattern)
    regex = "".join({"<component>": "[^/]+", "<k>": "[0-9]+", "<K>": "[0-9]+", "<metric>": ".+"}.get(part, re.escape(part))
                    if part.startswith("<") else re.escape(part) for part in parts)
    return re.compile(regex + "$")


def documented_pattern(key: str) -> str | None:
    """The METRICS pattern a metrics.jsonl key matches, the most specific first; None if none does."""
    for pattern, _, _ in sorted(METRICS, key=lambda row: row[0].count("<")):
        if metric_pattern(pattern).match(key):
            return pattern
    return None
