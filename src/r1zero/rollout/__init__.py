"""Generation engines behind one small interface.

An engine turns B prompts (token ids) into B x G completions (token ids), grouped: rows g*... of prompt b are
b*G .. b*G+G-1. Each completion ends with a stop string or EOS when it stopped, and is cut at max_new_tokens
otherwise. Engines never score or train. Every engine has the whole RolloutEngine interface: the trainer calls
`generate`, `require_version` before a step's rollouts, `load_weights` after every optimiser step when the engine
holds its own copy of the weights (`holds_weights`: vLLM), and `close` at the end; an engine that samples from the
policy itself (r1zero's) has nothing to load or check, and says so with no-op methods. `extend` continues rows
from token ids (prompt and completion so far), which is how a multi-turn rollout (r1zero.rollout.tool_use) goes
on after a tool's output was appended to a row.

    r1zero.rollout.transformers_engine   r1zero's own sampler, on the policy itself (the default; fastest on CPU)
    r1zero.rollout.vllm_engine           vLLM, in the training process or in each Ray rollout worker (GPUs)
    r1zero.rollout.tool_use              any engine above, with tool calls between turns (--tools python)
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch


class RowStream(NamedTuple):
    """Where a row's random draws continue: sample `sample` of the prompt seeded `seed` (r1zero.batch.prompt_seed),
    `offset` tokens already sampled. A row continued after a tool call draws what it would have drawn next, so
    its samples still depend on its prompt's seed alone."""

    seed: int
    sample: int
    offset: int


class Generation(NamedTuple):
    """What an engine returns for B prompts x G samples (N = B*G rows, in group order)."""

    completions: list[list[int]]  # N lists of token ids, stop sequence / EOS included when reached
    stopped: list[bool]  # N flags: True when the completion ended by itself (stop sequence or EOS)
    logprobs: list[list[float]] | None = None  # N lists, one per completion token: each sampled token's
    # log-probability under the engine's own forward at temperature 1 (vLLM), 0.0 on tool tokens, for the mismatch
    # metrics and corrections; None: the engine samples from the trainer's own policy (r1zero's engine)
    stop_strings: list[str | None] | None = None  # N: the stop string that ended each row (None: EOS or cut)
    sampled_mask: list[list[int]] | None = None  # N lists, one per completion token: 1 sampled by the policy, 0
    # inserted by a tool (its output); None: every token was sampled (no tools)
    tool_calls: list[list] | None = None  # N lists of r1zero.tools.ToolCall, in order; None: no tools
    tool_seconds: float = 0.0  # wall time generation waited for the tools

    def written(self, tokenizer) -> list[str]:
        """(N,) what the model wrote in each completion (model_text): what the rewards read."""
        masks = self.sampled_mask or [None] * len(self.completions)
        return [model_text(tokenizer, completion, mask) for completion, mask in zip(self.completions, masks)]

    def sampled_lengths(self) -> list[int]:
        """(N,) tokens the policy sampled in each completion (sampled_lengths)."""
        return sampled_lengths(self.completions, self.sampled_mask)


@runtime_checkable
class RolloutEngine(Protocol):
    pad_id: int  # the id completions are padded with when packed for the update
    holds_weights: bool  # True: a copy of its own, which load_weights must refresh after every update
    load_seconds: float  # how long the newest load_weights took (0 for an engine on the policy itself)

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Take `state` (the policy's weights after update `version`) as the weights to sample with."""
        ...

    def require_version(self, version: int) -> None:
        """Raise unless the weights sampled with are those after update `version`."""
        ...

    def close(self) -> None:
        """Free what the engine holds (processes, memory)."""
        ...

    def generate(
        self,
        prompts: list[list[int]],
        samples_per_prompt: int,
        max_new_tokens: int,
        temperature: float,
        generator: torch.Generator | None = None,
        seeds: list[int] | None = None,
        stop: tuple[str, ...] | None = None,
    ) -> Generation:
        """Sample `samples_per_prompt` completions per prompt; temperature 0 is greedy. With `seeds` (one per
        prompt, see r1zero.batch.prompt_seed) a prompt's samples depend on its seed only, not on the batch, the
        process or the number of rollout workers; otherwise all rows draw from `generator`. The stop strings are
        `stop` when given, else the engine's own."""
        ...

    def extend(
        self,
        contexts: list[list[int]],
        budgets: list[int],
        temperature: float,
        generator: torch.Generator | None = None,
        streams: list[RowStream] | None = None,
        stop: tuple[str, ...] | None = None,
    ) -> Generation:
        """One more completion of each context (a prompt and a completion so far, token ids), at most budgets[i]
        new tokens; with `streams`, row i's draws continue its stream. Only the new tokens are returned, and a
        stop string is looked for in them alone (never in the context)."""
        ...


def join_generations(generations: list[Generation]) -> Generation:
    """The rows of several Generations (rollout workers' blocks) in order; their tool waits summed."""
    def joined(name: str):
        if getattr(generations[0], name) is None:
            return None
        return [row for generation in generations for row in getattr(generation, name)]

    return Generation(joined("completions"), joined("stopped"), joined("logprobs"), joined("stop_strings"),
                      joined("sampled_mask"), joined("tool_calls"),
                      sum(generation.tool_seconds for generation in generations))


def sampled_lengths(completions: list[list[int]], sampled_mask: list[list[int]] | None) -> list[int]:
    """Tokens the policy sampled in each completion: its length, less any tool output."""
    if sampled_mask is None:
        return [len(completion) for completion in completions]
    return [sum(mask) for mask in sampled_mask]


def model_text(tokenizer, completion: list[int], sampled_mask: list[int] | None) -> str:
    """What the model wrote: with tool output in the completion (sampled_mask 0), its sampled spans decoded one by
    one and joined by a space, the tool's output left out; otherwise the completion decoded. The rewards read
    this, so a program that prints `<answer> 42 </answer>` earns nothing by it."""
    if sampled_mask is None or all(sampled_mask):
        return tokenizer.decode(completion, skip_special_tokens=True)
    spans, current = [], []
    for token, sampled in zip(completion, sampled_mask):
        if sampled:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return " ".join(tokenizer.decode(span, skip_special_tokens=True) for span in spans)
