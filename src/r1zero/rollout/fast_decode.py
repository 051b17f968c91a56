"""A lean decode step for Llama-family models (Llama, Qwen2), used by TransformersEngine after the prefill.

Why: on a CPU a decode step of a small model is mostly overhead, not arithmetic. transformers' forward builds
attention masks, grows the KV cache by concatenation (copying it every token) and runs three projections where
one would do. Here, for the architectures whose layers are exactly RMSNorm -> attention with rotary embeddings ->
RMSNorm -> SwiGLU MLP:
- the prompt's keys and values stay one copy per prompt, never repeated for its G samples: the G queries of a
  group meet their prompt's keys in one matrix product (a decode step reads the prompt cache once per group, not
  once per row, and the prompt is most of the cache); the softmax runs over prompt and generated columns together;
- the generated tokens' K/V cache is preallocated to the whole generation (N, kv_heads, T, d) and written in
  place, so rows that finish leave the batch by copying only that part;
- q/k/v and gate/up projections are fused into one matrix product each (weights concatenated once per call);
- the padding mask is built once per prompt; query heads are grouped over their key/value head (GQA) without
  copying the keys;
- the model's own modules still compute the rotary embeddings, the norms and the logits, so every variant of
  those (rope scaling, norm eps, biases) is what the model defines.

The numbers are those of the model's forward up to float rounding (tested to 1e-5 against it, and greedy decoding
token for token against transformers' `generate`). Other architectures keep transformers' forward (supports()).

Shapes: B prompts, G samples each, N = B*G rows (n still in the batch), P prompt width (left-padded), T max new
tokens, t generated so far, H hidden, d head dim, h query heads over kv key/value heads, g = h / kv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "qwen2")


def supports(model) -> bool:
    """True when `model` is a plain Llama or Qwen2 causal LM this decoder reproduces exactly."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED:
        return False
    if getattr(config, "use_sliding_window", False) or getattr(config, "mlp_bias", False):
        return False
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return False
    inner = getattr(model, "model", None)
    return inner is not None and hasattr(inner, "rotary_emb") and not hasattr(model, "peft_config")


class FastDecoder:
    """Decode steps over a preallocated cache, for rows whose prompts a transformers forward has prefilled."""

    def __init__(self, model, cache, attention_mask: torch.Tensor, group_size: int, max_new_tokens: int):
        """cache: the DynamicCache of the prefill over B prompts (B, kv_heads, P, d per layer); attention_mask
        (B, P). The rows are the B prompts repeated group_size times each (N = B * G)."""
        self.model = model
        inner = model.model
        self.layers = list(inner.layers)
        attention = self.layers[0].self_attn
        self.head_dim = attention.head_dim
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.scaling = attention.scaling
        self.group_size = group_size
        self.fused = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv_weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])  # (Q+2K, H)
            biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            qkv_bias = None if biases[0] is None else torch.cat(biases)
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])  # (2I, H)
            self.fused.append((qkv_weight, qkv_bias, gate_up))
        self.prompt_keys = [layer.keys.transpose(-1, -2).contiguous() for layer in cache.layers]  # (B, kv, d, P)
        self.prompt_values = [layer.values for layer in cache.layers]  # (B, kv, P, d)
        self.all_rows = attention_mask.shape[0] * group_size  # N: the batch before any row left
        self.rows = torch.arange(self.all_rows, device=attention_mask.device)  # (n,) b * G + sample
        dtype = self.prompt_values[0].dtype
        prompt_mask = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
            attention_mask == 0, float("-inf"))  # (B, P) additive: 0, or -inf on the left padding
        self.row_mask = prompt_mask.repeat_interleave(group_size, dim=0)[:, None, None]  # (n, 1, 1, P)
        shape = (self.all_rows, self.kv_heads, max_new_tokens, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=attention_mask.device) for _ in self.layers]
        self.values = [torch.zeros_like(keys) for keys in self.keys]  # (n, kv, T, d) the generated tokens' K/V
        self.column = 0  # the next generated column to write

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows `index` (finished rows leave the batch)."""
        self.keys = [keys[index] for keys in self.keys]
        self.values = [values[index] for values in self.values]
        self.rows, self.row_mask = self.rows[index], self.row_mask[index]

    def _per_prompt(self, per_row: torch.Tensor) -> torch.Tensor:
        """(n, kv, g, X) rows -> (B, kv, G*g, X): each prompt's rows side by side, zeros for rows that left."""
        n, kv, g, width = per_row.shape
        if n == self.all_rows:  # every row still here, in order
            slots = per_row
        else:
            slots = per_row.new_zeros(self.all_rows, kv, g, width)
            slots.index_copy_(0, self.rows, per_row)
        return slots.view(-1, self.group_size, kv, g, width).transpose(1, 2).reshape(-1, kv, self.group_size * g,
                                                                                    width)

    def _per_row(self, per_prompt: torch.Tensor, g: int) -> torch.Tensor:
        """(B, kv, G*g, X) -> (n, kv, g, X): the inverse of _per_prompt for the rows in the batch."""
        prompts, kv, _, width = per_prompt.shape
        rows = per_prompt.view(prompts, kv, self.group_size, g, width).transpose(1, 2).reshape(-1, kv, g, width)
        return rows if len(rows) == len(self.rows) else rows.index_select(0, self.rows)

    @torch.no_grad()
    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits (n, V) of the next token after `token` (n,) at positions `position` (n, 1)."""
        n = token.shape[0]
        column = self.column
        hidden = self.model.model.embed_tokens(token[:, None])  # (n, 1, H)
        cos, sin = self.model.model.rotary_emb(hidden, position)  # (n, 1, d)
        cos, sin = cos[:, None], sin[:, None]  # (n, 1, 1, d)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        g = self.heads // self.kv_heads
        for layer, (qkv_weight, qkv_bias, gate_up), prompt_keys, prompt_values, keys, values in zip(
                self.layers, self.fused, self.prompt_keys, self.prompt_values, self.keys, self.values):
            normed = layer.input_layernorm(hidden)  # (n, 1, H)
            qkv = F.linear(normed, qkv_weight, qkv_bias)  # (n, 1, Q+2K)
            query = qkv[..., :q_size].view(n, 1, self.heads, self.head_dim).transpose(1, 2)  # (n, h, 1, d)
            key = qkv[..., q_size:q_size + kv_size].view(n, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            value = qkv[..., q_size + kv_size:].view(n, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            query = query * cos + rotate_half(query) * sin
            keys[:, :, column:column + 1] = key * cos + rotate_half(key) * sin  # (n, kv, 1, d) into the cache
            values[:, :, column:column + 1] = value
            # query heads grouped over their shared key/value head (GQA) instead of copying the keys
            grouped = query.reshape(n, self.kv_heads, g, self.head_dim) * self.scaling  # (n, kv, g, d)
            prompt_scores = self._per_row(torch.matmul(self._per_prompt(grouped), prompt_keys), g)  # (n, kv, g, P)
            own_scores = torch.matmul(grouped, keys[:, :, :column + 1].transpose(-1, -2))  # (n, kv, g, t)
            weights = torch.softmax(torch.cat([prompt_scores + self.row_mask, own_scores], dim=-1), dim=-1)
            prompt_weights, own_weights = weights.split([prompt_scores.shape[-1], column + 1], dim=-1)
            attended = (self._per_row(torch.matmul(self._per_prompt(prompt_weights), prompt_values), g)
                        + torch.matmul(own_weights, values[:, :, :column + 1]))  # (n, kv, g, d)
            hidden = hidden + layer.self_attn.o_proj(attended.reshape(n, 1, q_size))
            gate, up = F.linear(layer.post_attention_layernorm(hidden), gate_up).chunk(2, dim=-1)  # (n, 1, I) each
            hidden = hidden + layer.mlp.down_proj(F.silu(gate) * up)
        self.column += 1
        return self.model.lm_head(self.model.model.norm(hidden))[:, -1]  # (n, V)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary embedding's partner of each pair: (-x2, x1) for x = (x1, x2) split along the last dimension."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)
