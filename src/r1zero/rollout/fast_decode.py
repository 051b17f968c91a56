"""A lean decode step for Llama-family models (Llama, Qwen2), used by TransformersEngine after the prefill.

Why: on a CPU a decode step of a small model is mostly overhead, not arithmetic. transformers' forward builds
attention masks, grows the KV cache by concatenation (copying it every token) and runs three projections where
one would do. Here, for the architectures whose layers are exactly RMSNorm -> attention with rotary embeddings ->
RMSNorm -> SwiGLU MLP:
- the prompt's keys and values stay one copy per prompt, never repeated for its G samples: the G queries of a
  group meet their prompt's keys in one matrix product (a decode step reads the prompt cache once per group, not
  once per row, and the prompt is most of the cache); the softmax runs over prompt and generated columns together.
  The queries reach their prompt's slots, and the results come back to their rows, by one index_copy_ and one
  index_select each (indices computed when the batch changes), and the padding mask rides in the product
  (baddbmm), as does the sum of the prompt and generated parts;
- q and k get their rotary embedding as one tensor, in three element-wise operations (rotate_half(x) * sin is
  roll(x, d/2) times sin with its first half negated), the attention's scaling folded into the query's cos/sin;
- the generated tokens' K/V cache is preallocated to the whole generation (N, kv_heads, T, d) and written in
  place, so rows that finish leave the batch by copying only that part;
- q/k/v and gate/up projections are fused into one matrix product each (weights concatenated once per call);
- the padding mask is built once per prompt; query heads are grouped over their key/value head (GQA) without
  copying the keys;
- the model's own modules still compute the rotary embeddings' cos/sin, the norms, the o/down projections and
  the logits, so every variant of those (rope scaling, norm eps, biases) is what the model defines.

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
        self.prompt_values = [layer.values.contiguous() for layer in cache.layers]  # (B, kv, P, d)
        prompts, width = attention_mask.shape  # B, P
        self.all_rows = prompts * group_size  # N: the batch before any row left
        self.rows = torch.arange(self.all_rows, device=attention_mask.device)  # (n,) b * G + sample
        dtype, device = self.prompt_values[0].dtype, attention_mask.device
        prompt_mask = torch.zeros(attention_mask.shape, dtype=dtype, device=device).masked_fill(
            attention_mask == 0, float("-inf"))  # (B, P) additive: 0, or -inf on the left padding
        self.prompt_mask = prompt_mask.repeat_interleave(self.kv_heads, dim=0)[:, None]  # (B*kv, 1, P)
        # rotary embedding of q and k together: rotate_half(x) * sin == roll(x, d/2) * sin with its first half
        # negated; the query heads also carry the attention's scaling
        half = self.head_dim // 2
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(device, dtype)  # (d,)
        scale = torch.cat([torch.full((self.heads, 1), self.scaling), torch.ones(self.kv_heads, 1)]).to(device, dtype)
        self.cos_scale, self.sin_scale = scale, scale * sign  # (h+kv, 1), (h+kv, d)
        # Each prompt's G*g query rows side by side, (B*kv*G*g, d) and their prompt weights (B*kv*G*g, P), so that a
        # group meets its prompt's keys and values in one product. Rows that left keep stale (finite) values that
        # are never read back. query_slots has one spare row per key head of each batch row: the rotated q and k
        # are one tensor, and its key rows are copied there, out of the way, in the same index_copy_.
        slots = self.all_rows * self.heads
        self.query_slots = torch.zeros(slots + self.all_rows * self.kv_heads, self.head_dim, dtype=dtype, device=device)
        self.weight_slots = torch.zeros(slots, width, dtype=dtype, device=device)
        shape = (self.all_rows, self.kv_heads, max_new_tokens, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.values = [torch.zeros_like(keys) for keys in self.keys]  # (n, kv, T, d) the generated tokens' K/V
        self.column = 0  # the next generated column to write
        self._index_rows()

    def _index_rows(self) -> None:
        """The slot of each batch row's query heads: query_index (n*h,) in (row, head) order, and qk_index
        (n*(h+kv),) for the rotated q and k together, whose key rows go to the spare rows."""
        g = self.heads // self.kv_heads
        prompt, sample = self.rows[:, None] // self.group_size, self.rows[:, None] % self.group_size  # (n, 1)
        head = torch.arange(self.heads, device=self.rows.device)  # (h,) = key/value head * g + j
        query_index = ((prompt * self.kv_heads + head // g) * self.group_size + sample) * g + head % g  # (n, h)
        spare = len(self.weight_slots) + torch.arange(len(self.rows) * self.kv_heads, device=self.rows.device)
        self.query_index = query_index.flatten()  # (n*h,)
        self.qk_index = torch.cat([query_index, spare.view(-1, self.kv_heads)], dim=1).flatten()  # (n*(h+kv),)

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows `index` (finished rows leave the batch)."""
        self.keys = [keys[index] for keys in self.keys]
        self.values = [values[index] for values in self.values]
        self.rows = self.rows[index]
        self._index_rows()

    @torch.no_grad()
    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits (n, V) of the next token after `token` (n,) at positions `position` (n, 1)."""
        n, d, column = token.shape[0], self.head_dim, self.column
        h, kv, g = self.heads, self.kv_heads, self.heads // self.kv_heads
        q_size, kv_size, width = h * d, kv * d, self.weight_slots.shape[1]
        hidden = self.model.model.embed_tokens(token)  # (n, H)
        cos, sin = self.model.model.rotary_emb(hidden[:, None], position)  # (n, 1, d)
        cos, sin = cos * self.cos_scale, sin * self.sin_scale  # (n, h+kv, d)
        query_slots = self.query_slots[:len(self.weight_slots)].view(-1, self.group_size * g, d)  # (B*kv, G*g, d)
        weight_slots = self.weight_slots.view(-1, self.group_size * g, width)  # (B*kv, G*g, P)
        for layer, (qkv_weight, qkv_bias, gate_up), prompt_keys, prompt_values, keys, values in zip(
                self.layers, self.fused, self.prompt_keys, self.prompt_values, self.keys, self.values):
            qkv = F.linear(layer.input_layernorm(hidden), qkv_weight, qkv_bias)  # (n, Q+2K)
            qk = qkv[:, :q_size + kv_size].view(n, h + kv, d)
            qk = qk * cos + qk.roll(d // 2, dims=-1) * sin  # (n, h+kv, d) rotated, the query heads scaled
            keys[:, :, column] = qk[:, h:]  # (n, kv, d) into the cache
            values[:, :, column] = qkv[:, q_size + kv_size:].view(n, kv, d)
            self.query_slots.index_copy_(0, self.qk_index, qk.view(-1, d).to(self.query_slots.dtype))  # to their slots
            prompt_scores = torch.baddbmm(self.prompt_mask, query_slots, prompt_keys.view(-1, d, width))
            prompt_scores = prompt_scores.view(-1, width).index_select(0, self.query_index)  # (n*h, P)
            query = qk[:, :h].view(n, kv, g, d)  # query heads grouped over their key/value head (GQA)
            own_scores = torch.matmul(query, keys[:, :, :column + 1].transpose(-1, -2))  # (n, kv, g, t)
            weights = torch.softmax(torch.cat([prompt_scores.view(n, kv, g, width), own_scores], dim=-1), dim=-1)
            self.weight_slots.index_copy_(0, self.query_index,
                                          weights[..., :width].reshape(-1, width).to(self.weight_slots.dtype))
            prompt_part = torch.bmm(weight_slots, prompt_values.view(-1, width, d)).view(-1, d)  # (B*kv*G*g, d)
            attended = torch.baddbmm(prompt_part.index_select(0, self.query_index).view(n * kv, g, d),
                                     weights[..., width:].reshape(n * kv, g, column + 1),
                                     values[:, :, :column + 1].reshape(n * kv, column + 1, d))  # (n*kv, g, d)
            hidden = hidden + layer.self_attn.o_proj(attended.view(n, q_size))
            gate, up = F.linear(layer.post_attention_layernorm(hidden), gate_up).chunk(2, dim=-1)  # (n, I) each
            hidden = hidden + layer.mlp.down_proj(F.silu(gate) * up)
        self.column += 1
        return self.model.lm_head(self.model.model.norm(hidden))  # (n, V)
