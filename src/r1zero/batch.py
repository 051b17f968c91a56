"""One training step's samples: prompts drawn, completions generated and scored, with DAPO's dynamic sampling
and overlong reward shaping.

    batch = collect_batch(problems, encode, engine, scorer, tokenizer, config, step)
    batch.reward_matrix(config.group_size)      # (B, G) total rewards, overlong penalty included

Shapes: B prompts, G samples per prompt, N = B*G completions in group order (rows g*G .. g*G+G-1 answer
prompt g).

Sampling is seeded per prompt (prompt_seed): the k-th prompt drawn at a step is sampled with a seed made of the
run's seed, the step and k alone, so the completions are the same whether one process generates them all or
rollout workers share them out (r1zero.distributed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from r1zero.algorithms import informative_groups, overlong_penalty
from r1zero.example import Example
from r1zero.rewards import RewardBatch
from r1zero.rollout import sampled_lengths
from r1zero.tools import ToolCall

OVERLONG = "overlong"  # the reward component DAPO's length penalty is logged as


def prompt_seed(run_seed: int, step: int, index: int) -> int:
    """The sampling seed of the index-th prompt drawn at `step` (counting across dynamic sampling's rounds): a
    63-bit integer mixed from the three numbers by numpy's SeedSequence, so neighbouring prompts and steps get
    unrelated streams."""
    return int(np.random.SeedSequence([run_seed, step, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class StepBatch:
    """B prompts with their G completions each, scored."""

    examples: list[Example]  # (B,)
    prompts: list[list[int]]  # (B,) prompt token ids
    completions: list[list[int]]  # (N,) completion token ids
    stopped: list[bool]  # (N,) True when the completion ended by itself (stop string or EOS)
    texts: list[str]  # (N,) decoded completions
    rewards: RewardBatch  # (N,) per component and in total
    counts: dict[str, float] = field(default_factory=dict)  # dynamic sampling: rounds, kept and filled groups
    engine_logprobs: list[list[float]] | None = None  # (N,) the engine's log-probability of each sampled token
    # (vLLM), or None (r1zero's engine: it samples from the policy itself)
    sampled_mask: list[list[int]] | None = None  # (N,) per completion token: 1 sampled, 0 a tool's output; None:
    # no tools
    tool_calls: list[list] | None = None  # (N,) each completion's r1zero.tools.ToolCall list; None: no tools
    tool_seconds: float = 0.0  # wall time generation waited for the tools
    versions: list[int] | None = None  # (N,) the policy version that sampled each completion (the weights after
    # that step's update); None: the newest (synchronous training)

    def sampled_lengths(self) -> list[int]:
        """(N,) tokens the policy sampled in each completion (tool output not counted)."""
        return sampled_lengths(self.completions, self.sampled_mask)

    def reward_matrix(self, group_size: int) -> torch.Tensor:
        """(B, G) total rewards."""
        return torch.tensor(self.rewards.total, dtype=torch.float32).view(len(self.prompts), group_size)

    def select_groups(self, groups: list[int], group_size: int) -> "StepBatch":
        """The batch made of the prompt groups `groups`, in that order."""
        rows = [g * group_size + i for g in groups for i in range(group_size)]
        pick = lambda values: [values[r] for r in rows]  # noqa: E731
        rewards = RewardBatch(
            total=pick(self.rewards.total),
            components={name: pick(values) for name, values in self.rewards.components.items()},
            reasons={name: pick(values) for name, values in self.rewards.reasons.items()},
            health=self.rewards.health,
        )
        maybe = lambda values: None if values is None else pick(values)  # noqa: E731
        return StepBatch([self.examples[g] for g in groups], [self.prompts[g] for g in groups], pick(self.completions),
                         pick(self.stopped), pick(self.texts), rewards, dict(self.counts),
                         maybe(self.engine_logprobs), maybe(self.sampled_mask), maybe(self.tool_calls),
                         self.tool_seconds, maybe(self.versions))

    def staleness(self, learner_version: int) -> list[int]:
        """(N,) versions each completion's sampling policy lags `learner_version` (0 for synchronous batches)."""
        return [learner_version - version for version in self.versions] if self.versions is not None else \
            [0] * len(self.completions)

    def state_dict(self) -> dict:
        """The batch as plain lists, numbers and strings (a checkpoint's in-flight samples; torch.load reads them
        with weights_only)."""
        return {"examples": [dataclasses.asdict(example) for example in self.examples], "prompts": self.prompts,
                "completions": self.completions, "stopped": self.stopped, "texts": self.texts,
                "rewards": dict(self.rewards._asdict()), "counts": self.counts, "engine_logprobs": self.engine_logprobs,
                "sampled_mask": self.sampled_mask, "tool_seconds": self.tool_seconds, "versions": self.versions,
                "tool_calls": None if self.tool_calls is None else [[tuple(call) for call in calls]
                                                                    for calls in self.tool_calls]}

    @classmethod
    def from_state_dict(cls, state: dict) -> "StepBatch":
        tool_calls = state["tool_calls"]
        return cls(**{**state, "examples": [Example(**fields) for fields in state["examples"]],
                      "rewards": RewardBatch(**state["rewards"]),
                      "tool_calls": None if tool_calls is None else [[ToolCall(*call) for call in calls]
                                                                     for calls in tool_calls]})


def concatenate(batches: list[StepBatch]) -> StepBatch:
    """The groups of several batches in order; reward health counters are summed."""
    first = batches[0]
    joined = lambda name: [x for b in batches for x in getattr(b, name)]  # noqa: E731
    health: dict[str, int] = {}
    for batch in batches:
        for key, count in batch.rewards.health.items():
            health[key] = health.get(key, 0) + count
    rewards = RewardBatch(
        total=[x for b in batches for x in b.rewards.total],
        components={n: [x for b in batches for x in b.rewards.components[n]] for n in first.rewards.components},
        reasons={n: [x for b in batches for x in b.rewards.reasons[n]] for n in first.rewards.reasons},
        health=health,
    )
    maybe = lambda name: None if getattr(first, name) is None else joined(name)  # noqa: E731
    return StepBatch(joined("examples"), joined("prompts"), joined("completions"), joined("stopped"), joined("texts"),
                     rewards, engine_logprobs=maybe("engine_logprobs"), sampled_mask=maybe("sampled_mask"),
                     tool_calls=maybe("tool_calls"), tool_seconds=sum(batch.tool_seconds for batch in batches),
                     versions=maybe("versions"))


def generate_and_score(examples: list[Example], encode, engine, scorer, tokenizer, config, seeds: list[int]) \
        -> StepBatch:
    """Generate G completions for each example (prompt b sampled with seeds[b]) and score them; with
    overlong_buffer > 0 the DAPO length penalty (times overlong_penalty_factor, on the tokens the policy sampled)
    is added to each total and logged as the component "overlong". With tools the rewards read what the model
    wrote, without the tools' output (r1zero.rollout.model_text); `texts` keep the whole completion."""
    prompts = encode(examples)
    generation = engine.generate(prompts, config.group_size, config.max_new_tokens, config.temperature, seeds=seeds)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in generation.completions]
    rewards = scorer(generation.written(tokenizer), [e for e in examples for _ in range(config.group_size)])
    if config.overlong_buffer:
        lengths = torch.tensor(generation.sampled_lengths())
        penalty = (overlong_penalty(lengths, config.max_new_tokens, config.overlong_buffer)
                   * config.overlong_penalty_factor).tolist()
        rewards = rewards._replace(total=[t + p for t, p in zip(rewards.total, penalty)],
                                   components={**rewards.components, OVERLONG: penalty},
                                   reasons={**rewards.reasons, OVERLONG: [""] * len(penalty)})
    return StepBatch(list(examples), prompts, list(generation.completions), list(generation.stopped), texts, rewards,
                     engine_logprobs=generation.logprobs, sampled_mask=generation.sampled_mask,
                     tool_calls=generation.tool_calls, tool_seconds=generation.tool_seconds)


def collect_batch(problems, encode, engine, scorer, tokenizer, config, step: int) -> StepBatch:
    """B = prompts_per_step groups for training step `step`. Without dynamic sampling: one round of B prompts.

    With dynamic_sampling (DAPO, Yu et al. 2025, section 3.2): groups whose rewards are all equal carry no
    gradient, so they are dropped and more prompts are drawn, B at a time, until B informative groups are
    collected or max_sampling_rounds rounds have run. If the cap is hit first, the batch is filled up with
    dropped groups (which get advantage 0) so its size, and the meaning of every batch setting, stays the same.
    counts: rounds, groups kept, groups dropped, groups used as filling.
    """
    size = config.prompts_per_step

    def next_round(rounds_done: int) -> StepBatch:
        seeds = [prompt_seed(config.seed, step, rounds_done * size + b) for b in range(size)]
        return generate_and_score(problems.next_batch(size), encode, engine, scorer, tokenizer, config, seeds)

    first = next_round(0)
    if not config.dynamic_sampling:
        return first
    kept: list[StepBatch] = []
    dropped: list[StepBatch] = []
    have, rounds, batch, waited = 0, 0, first, 0.0
    while True:
        rounds += 1
        waited += batch.tool_seconds
        informative = informative_groups(batch.reward_matrix(config.group_size)).tolist()
        useful = [g for g, ok in enumerate(informative) if ok][: size - have]
        kept.append(batch.select_groups(useful, config.group_size))
        dropped.append(batch.select_groups([g for g, ok in enumerate(informative) if not ok], config.group_size))
        have += len(useful)
        if have == size or rounds == config.max_sampling_rounds:
            break
        batch = next_round(rounds)
    filling = concatenate(dropped)
    filled = min(size - have, len(filling.prompts))
    result = concatenate(kept + [filling.select_groups(list(range(filled)), config.group_size)])
    result.tool_seconds = waited  # each round's wait once (its kept and dropped groups both carry it)
    result.counts = {"dynamic_sampling/rounds": rounds, "dynamic_sampling/kept_groups": have,
                     "dynamic_sampling/dropped_groups": sum(len(d.prompts) for d in dropped),
                     "dynamic_sampling/filled_groups": filled}
    return result
