"""Generation engines behind one small interface.

An engine turns B prompts (token ids) into B x G completions (token ids), grouped: rows g*... of prompt b are
b*G .. b*G+G-1. Each completion ends with the stop sequence or EOS when it stopped, and is cut at
max_new_tokens otherwise. Engines never score or train; the trainer calls `generate` and nothing else.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch


class Generation(NamedTuple):
    """What an engine returns for B prompts x G samples (N = B*G rows, in group order)."""

    completions: list[list[int]]  # N lists of token ids, stop sequence / EOS included when reached
    stopped: list[bool]  # N flags: True when the completion ended by itself (stop sequence or EOS)


class RolloutEngine(Protocol):
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
