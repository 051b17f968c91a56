"""PPO's critic: a value model with the policy's architecture and a scalar head, initialised from the base model.

    r1zero train --advantage gae --critic-learning-rate 1e-5          # PPO with a critic (TinyZero's recipe)

The value of completion token t, V(s_t), is read from the hidden state at the position before token t (the
last prompt token for t = 0): what the model knew when token t was about to be generated. The head starts at
zero, so the first values are 0 and the first advantages are the plain returns.

Shapes: N completions, T completion width, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1zero import algorithms
from r1zero.models import DTYPES, autocast, enable_checkpointing, states_before_tokens
from r1zero.update import Minibatch, Rollout, Sequences, UpdateSettings, minibatch_steps

HEAD_FILE = "value_head.pt"


class ValueModel(torch.nn.Module):
    """A transformer without its language-model head, plus a linear head to one number per position."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.config.hidden_size, 1, dtype=backbone.dtype)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_base(cls, path, dtype: str | torch.dtype, device: torch.device,
                  gradient_checkpointing: bool = False) -> "ValueModel":
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(path, dtype=DTYPES.get(dtype, dtype))
        return cls(enable_checkpointing(backbone, gradient_checkpointing)).to(device)

    def completion_values(self, sequences: Sequences) -> torch.Tensor:
        """(n, T) V(s_t) for each completion token, in float32 or wider. (The head has one output, so there is
        no vocabulary to chunk over.)"""
        hidden = states_before_tokens(self.backbone, sequences.prompt_ids, sequences.prompt_mask,
                                      sequences.group_index, sequences.completion_ids, sequences.completion_mask,
                                      field="last_hidden_state")  # (n, T, H)
        values = self.head(hidden).squeeze(-1)  # (n, T)
        return values if values.dtype == torch.float64 else values.float()


@dataclass(frozen=True)
class CriticStats:
    """The critic update's numbers, means over its optimiser steps."""

    value_loss: float = 0.0
    grad_norm: float = 0.0
    value_clip_fraction: float = 0.0  # share of tokens whose value loss was clipped
    skipped_updates: int = 0


class Critic:
    """The value model with its own optimiser: `values` scores a step's sequences, `update` regresses them on the
    returns with PPO's clipped value loss, on the policy's minibatch plan."""

    def __init__(self, model: ValueModel, learning_rate: float, weight_decay: float, value_clip: float,
                 compute: torch.dtype | None = None):
        self.model = model
        self.value_clip = value_clip  # 0: no clipping
        self.compute = compute  # autocast dtype (mixed precision), or None
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)

    @torch.no_grad()
    def values(self, sequences: Sequences, chunk: int) -> torch.Tensor:
        """(N, T) values without gradient, `chunk` rows at a time; 0 on padding."""
        self.model.eval()
        count = len(sequences.completion_ids)
        with autocast(self.model, self.compute):
            values = torch.cat([self.model.completion_values(sequences.rows(slice(s, s + chunk)))
                                for s in range(0, count, chunk)])
        return values * sequences.policy_mask  # 0 on padding and on a tool's output (not a state acted in)

    def update(self, rollout: Rollout, plan: list[Minibatch], settings: UpdateSettings) -> CriticStats:
        """One optimiser step per minibatch of the plan on the value loss against rollout.returns, weighted with
        the policy's loss aggregation over every sampled token (the value of a masked-out response is still
        a prediction to learn; a tool's output is not a state the policy acts in, and GAE skips it)."""
        self.model.train()

        def micro_loss(micro: Rollout, weights: torch.Tensor):
            with autocast(self.model, self.compute):
                values = self.model.completion_values(micro)  # (n, t)
            value_loss = algorithms.clipped_value_loss(values, micro.old_values, micro.returns, self.value_clip)
            clipped = (value_loss.is_clipped.float() * micro.policy_mask).sum().item()
            return (value_loss.per_token_loss * weights).sum(), {"value_clip_fraction": clipped}

        totals = minibatch_steps(list(self.model.parameters()), self.optimizer, rollout, plan, settings.aggregation,
                                 settings.max_new_tokens, settings.max_grad_norm, micro_loss,
                                 ("value_clip_fraction",), mask=lambda rows: rows.policy_mask)
        return CriticStats(totals.loss, totals.grad_norm, totals.token_means["value_clip_fraction"],
                           totals.skipped_updates)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
