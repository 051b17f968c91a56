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
    """The value model with its own optimiser; `values` scores a rollout, `update` regresses it on the returns."""

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

    def update(self, rollout, config, schedule) -> dict:
        """Clipped value loss against rollout.returns, one optimiser step per minibatch of `schedule` (the same
        (minibatch, micro-batches) plan as the policy's). Returns value_loss, value_clip_fraction, grad_norm."""
        self.model.train()
        aggregation = algorithms.lookup(algorithms.LOSS_AGGREGATIONS, config.loss_aggregation, "loss aggregation")
        totals = {"value_loss": 0.0, "value_clip_fraction": 0.0, "grad_norm": 0.0}
        steps = 0
        for batch, micro_slices in schedule:  # minibatch rows, [positions of each micro-batch]
            batch = rollout.rows(batch)
            weights = aggregation(batch.completion_mask, config.max_new_tokens)  # (M, T)
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum, clipped = 0.0, 0.0
            for rows in micro_slices:
                micro = batch.rows(rows).trimmed()
                values = self.model.completion_values(micro)  # (m, t)
                value_loss = algorithms.clipped_value_loss(values, micro.old_values, micro.returns, config.value_clip)
                loss = (value_loss.per_token_loss * weights[rows][:, :values.shape[1]]).sum()
                loss.backward()
                loss_sum += loss.item()
                clipped += (value_loss.is_clipped.float() * micro.completion_mask).sum().item()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm or float("inf"))
            if not torch.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                continue
            self.optimizer.step()
            steps += 1
            totals["value_loss"] += loss_sum
            totals["value_clip_fraction"] += clipped / batch.completion_mask.sum().clamp(min=1).item()
            totals["grad_norm"] += norm.item()
        return {f"critic/{key}": value / max(1, steps) for key, value in totals.items()}

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
