"""PPO's critic: a value model with the policy's architecture and a scalar head, initialised from the base model.

    r1zero train --advantage gae --critic-learning-rate 1e-5          # PPO with a critic (TinyZero's recipe)

The value of completion token t, V(s_t), is read from the hidden state at the position before token t (the
last prompt token for t = 0): what the model knew when token t was about to be generated. The head starts at
zero, so the first values are 0 and the first advantages are the plain returns.

Shapes: N completions, T completion width, H hidden size.
"""

from __future__ import annotations

import torch

from r1zero import algorithms
from r1zero.models import DTYPES, shared_prompt_forward

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
    def from_base(cls, path, dtype: str, device: torch.device) -> "ValueModel":
        from transformers import AutoModel

        return cls(AutoModel.from_pretrained(path, dtype=DTYPES[dtype])).to(device)

    def completion_values(self, rollout) -> torch.Tensor:
        """(n, T) V(s_t) for each completion token of a trainer Rollout, in float32 or wider."""
        hidden = shared_prompt_forward(self.backbone, rollout.prompt_ids, rollout.prompt_mask, rollout.group_index,
                                       rollout.completion_ids, rollout.completion_mask,
                                       field="last_hidden_state")  # (n, T, H)
        values = self.head(hidden).squeeze(-1)  # (n, T)
        return values if values.dtype == torch.float64 else values.float()


class Critic:
    """The value model with its own optimiser; `values` scores a rollout, `micro_loss` is what the trainer's
    minibatch_steps regresses on the returns."""

    def __init__(self, model: ValueModel, learning_rate: float, weight_decay: float):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)

    @torch.no_grad()
    def values(self, rollout, chunk: int) -> torch.Tensor:
        """(N, T) values without gradient, `chunk` rows at a time; 0 on padding."""
        self.model.eval()
        count = len(rollout.completion_ids)
        values = torch.cat([self.model.completion_values(rollout.rows(slice(s, s + chunk)))
                            for s in range(0, count, chunk)])
        return values * rollout.completion_mask

    def micro_loss(self, value_clip: float):
        """The critic's loss for the trainer's minibatch_steps: PPO's clipped value loss against rollout.returns,
        weighted per token; also counts the tokens whose value was clipped."""

        def loss(micro, weights: torch.Tensor):
            values = self.model.completion_values(micro)  # (m, t)
            value_loss = algorithms.clipped_value_loss(values, micro.old_values, micro.returns, value_clip)
            clipped = (value_loss.is_clipped.float() * micro.completion_mask).sum().item()
            return (value_loss.per_token_loss * weights).sum(), {"value_clip_fraction": clipped}

        return loss

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 is a perfect critic, 0 no better than a
    constant, negative worse. NaN when the returns do not vary."""
    residual = algorithms.masked_mean((returns - values - algorithms.masked_mean(returns - values, mask)) ** 2, mask)
    spread = algorithms.masked_mean((returns - algorithms.masked_mean(returns, mask)) ** 2, mask)
    return float(1 - residual / spread) if spread > 0 else float("nan")
