"""Generation engines behind one small interface.

An engine turns B prompts (token ids) into B x G completions (token ids), grouped: rows g*... of prompt b are
b*G .. b*G+G-1. Each completion ends with the stop sequence or EOS when it stopped, and is cut at
max_new_tokens otherwise. Engines never score or train. Every engine has the whole RolloutEngine interface: the
trainer calls `generate`, `require_version` before a step's rollouts, `load_weights` after every optimiser step
when the engine holds its own copy of the weights (`holds_weights`: vLLM), and `close` at the end; an engine that
samples from the policy itself (r1zero's) has nothing to load or check, and says so with no-op methods.

    r1zero.rollout.transformers_engine   r1zero's own sampler, on the policy itself (the default; fastest on CPU)
    r1zero.rollout.vllm_engine           vLLM, in the training process or in each Ray rollout worker (GPUs)
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch


class Generation(NamedTuple):
    """What an engine returns for B prompts x G samples (N = B*G rows, in group order)."""

    completions: list[list[int]]  # N lists of token ids, stop sequence / EOS included when reached
    stopped: list[bool]  # N flags: True when the completion ended by itself (stop sequence or EOS)
    logprobs: list[list[float]] | None = None  # N lists: each sampled token's log-probability under the engine's
    # own forward at temperature 1 (vLLM), for the mismatch metrics and corrections; None: the engine samples from
    # the trainer's own policy (r1zero's engine), so there is no mismatch to measure


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
    ) -> Generation:
        """Sample `samples_per_prompt` completions per prompt; temperature 0 is greedy. With `seeds` (one per
        prompt, see r1zero.batch.prompt_seed) a prompt's samples depend on its seed only, not on the batch, the
        process or the number of rollout workers; otherwise all rows draw from `generator`."""
        ...
