"""The names of the metrics that more than one module reads: the trainer writes them to metrics.jsonl, the health
monitor watches them and the report plots them. Every key of metrics.jsonl is listed in the README ("What a run
writes"); the per-component, per-k and per-namespace ones are built from the prefixes here.
"""

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
