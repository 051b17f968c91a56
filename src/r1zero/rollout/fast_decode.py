"""A lean decode step for Llama-family models (Llama, Qwen2), used by TransformersEngine after the prefill.

Why: on a CPU a decode step of a small model is mostly overhead, not arithmetic. transformers' forward builds
attention masks, grows the KV cache by concatenation (copying it every token) and runs three projections where
one would do. Here, for the architectures whose layers are exactly RMSNorm -> attention with rotary embeddings ->
RMSNorm -> SwiGLU MLP:
- the K/V cache is preallocated to the whole generation (N, kv_heads, P + T, d) and written in place;
- q/k/v and gate/up projections are fused into one matrix product each (weights concatenated once per call);
- the padding mask is built once and sliced; attention is two batched products per layer, query heads grouped
  over their key/value head (GQA) without copying the keys;
- the model's own modules still compute the rotary embeddings, the norms and the logits, so every variant of
  those (rope scaling, norm eps, biases) is what the model defines.

The numbers are those of the model's forward up to float rounding (tested to 1e-5 against it, and greedy decoding
token for token against transformers' `generate`). Other architectures keep transformers' forward (supports()).

Shapes: N rows, P prompt width (left-padded), T max new tokens, H hidden, d head dim, C = P + T cache columns.
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
        prompt_width = attention_mask.shape[1]
        self.column = prompt_width  # the next cache column to write
        self.fused = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv_weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])  # (Q+2K, H)
            biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            qkv_bias = None if biases[0] is None else torch.cat(biases)
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])  # (2I, H)
            self.fused.append((qkv_weight, qkv_bias, gate_up))
        self.keys, self.values = [], []
        for index in range(len(self.layers)):
            layer_cache = cache.layers[index]
            keys = layer_cache.keys.repeat_interleave(group_size, dim=0)  # (N, kv, P, d)
            values = layer_cache.values.repeat_interleave(group_size, dim=0)
            rows = keys.shape[0]
            key_buffer = keys.new_zeros(rows, self.kv_heads, prompt_width + max_new_tokens,
                                        self.head_dim)  # (N, kv, C, d)
            value_buffer = torch.zeros_like(key_buffer)
            key_buffer[:, :, :prompt_width] = keys
            value_buffer[:, :, :prompt_width] = values
            self.keys.append(key_buffer)
            self.values.append(value_buffer)
        mask = attention_mask.repeat_interleave(group_size, dim=0).bool()  # (N, P)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], max_new_tokens)], dim=1)  # (N, C)
        dtype = self.keys[0].dtype
        self.mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the rows `index` (finished rows leave the batch)."""
        self.keys = [keys[index] for keys in self.keys]
        self.values = [values[index] for values in self.values]
        self.mask = self.mask[index]

    @torch.no_grad()
    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits (n, V) of the next token after `token` (n,) at positions `position` (n, 1)."""
        n = token.shape[0]
        column = self.column
        hidden = self.model.model.embed_tokens(token[:, None])  # (n, 1, H)
        cos, sin = self.model.model.rotary_emb(hidden, position)  # (n, 1, d)
        cos, sin = cos[:, None], sin[:, None]  # (n, 1, 1, d)
        mask = self.mask[:, None, None, :column + 1]  # (n, 1, 1, c) additive: 0 or -inf
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for layer, (qkv_weight, qkv_bias, gate_up), keys, values in zip(self.layers, self.fused, self.keys,
                                                                        self.values):
            normed = layer.input_layernorm(hidden)  # (n, 1, H)
            qkv = F.linear(normed, qkv_weight, qkv_bias)  # (n, 1, Q+2K)
            query = qkv[..., :q_size].view(n, 1, self.heads, self.head_dim).transpose(1, 2)  # (n, h, 1, d)
            key = qkv[..., q_size:q_size + kv_size].view(n, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            value = qkv[..., q_size + kv_size:].view(n, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            query = query * cos + rotate_half(query) * sin
            keys[:, :, column:column + 1] = key * cos + rotate_half(key) * sin  # (n, kv, 1, d) into the cache
            values[:, :, column:column + 1] = value
            # one query per row: two batched products beat a fused attention kernel here; query heads are
            # grouped over their shared key/value head (GQA) instead of copying the keys
            grouped = query.reshape(n, self.kv_heads, self.heads // self.kv_heads, self.head_dim)  # (n, kv, g, d)
            scores = torch.matmul(grouped, keys[:, :, :column + 1].transpose(-1, -2)) * self.scaling  # (n, kv, g, c)
            weights = torch.softmax(scores + mask, dim=-1)
            attended = torch.matmul(weights, values[:, :, :column + 1])  # (n, kv, g, d)
            hidden = hidden + layer.self_attn.o_proj(attended.reshape(n, 1, q_size))
            gate, up = F.linear(layer.post_attention_layernorm(hidden), gate_up).chunk(2, dim=-1)  # (n, 1, I) each
            hidden = hidden + layer.mlp.down_proj(F.silu(gate) * up)
        self.column += 1
        return self.model.lm_head(self.model.model.norm(hidden))[:, -1]  # (n, V)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary embedding's partner of each pair: (-x2, x1) for x = (x1, x2) split along the last dimension."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)
