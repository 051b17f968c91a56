"""Loading the policy (with LoRA), the frozen reference model and the tokenizer; saving the final model;
log-probabilities of completions.

Shapes: N sequences, P prompt width (left-padded), T completion width (right-padded), V vocabulary.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from pathlib import Path
from typing import NamedTuple

import torch
import torch.utils.checkpoint

from r1zero.algorithms import entropy_from_logits, token_logprobs

SHIPPED_MODEL = Path(__file__).parent / "assets" / "base-model"  # the built-in base model (r1zero.pretrain)
SHIPPED_TOOLS_MODEL = SHIPPED_MODEL.parent / "base-model-tools"  # the tool model: pair_sums and --tools python
SHIPPED_MODELS = {"builtin": SHIPPED_MODEL, "builtin-tools": SHIPPED_TOOLS_MODEL}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Precision(NamedTuple):
    """What the dtype setting means for each copy of the weights."""

    parameters: torch.dtype  # the trained weights, their gradients and AdamW's moments
    compute: torch.dtype | None  # forward and backward under torch.autocast in this dtype; None: the parameters'
    reference: torch.dtype  # the frozen reference model (no gradients, no optimiser state)


PRECISIONS = {
    "float32": Precision(torch.float32, None, torch.float32),
    # mixed precision as peers do it: float32 master weights and optimiser state, bfloat16 matrix products
    "bfloat16": Precision(torch.float32, torch.bfloat16, torch.bfloat16),
    # half-precision parameters throughout (AdamW moments too): overflows easily; for GPUs without bfloat16
    "float16": Precision(torch.float16, None, torch.float16),
}


def autocast(model, compute: torch.dtype | None):
    """torch.autocast in `compute` on the model's device type, or a context that changes nothing for None."""
    if compute is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=next(model.parameters()).device.type, dtype=compute)


def resolve_model_path(model: str) -> Path:
    """"builtin" and "builtin-tools" are the base models shipped inside the package (SHIPPED_MODELS); anything else
    is a local folder."""
    path = SHIPPED_MODELS.get(model, Path(model))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path} has no config.json: give a folder saved with save_pretrained")
    return path


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(path: Path) -> int | None:
    """The longest sequence (prompt + response) the model at `path` takes, read from its config.json without
    loading weights; None when the config names none. ValueError when config.json is not valid JSON."""
    import json

    config_path = Path(path) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path}: not valid JSON ({error}); save the model again with save_pretrained") \
            from None
    for section in (config, config.get("text_config") or {}):  # multimodal configs nest the language model's
        for key in CONTEXT_KEYS:
            if isinstance(section.get(key), int):
                return section[key]
    return None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def left_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists left-padded into (B, P) ids and a (B, P) mask (1 on real tokens), P the longest: how every
    prompt batch is laid out, so that each prompt's last token sits in the last column."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, P)
    for index, ids in enumerate(sequences):
        if ids:
            input_ids[index, width - len(ids):] = torch.tensor(ids)
            attention_mask[index, width - len(ids):] = 1
    return input_ids, attention_mask


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise FileNotFoundError(f"model folder {path} has no tokenizer (tokenizer.json or tokenizer_config.json); "
                                f"save one beside the weights with tokenizer.save_pretrained({str(path)!r})")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, dtype: str | torch.dtype, device: torch.device, trainable: bool = True):
    """A causal LM from a local folder with parameters in `dtype` (a DTYPES name or a torch dtype);
    `trainable=False` gives a frozen copy in eval mode (the reference)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES.get(dtype, dtype)).to(device)
    model.train(trainable)
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model


def forward_takes(model, argument: str) -> bool:
    """Whether the model's forward has a parameter named `argument` (a peft model passes its keyword arguments
    through to the model it wraps, so that model's forward decides)."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(model.forward).parameters


def cache_keyword(model) -> str:
    """transformers 5.x renamed the forward argument `past_key_values` to `cache`; accept both."""
    return "cache" if forward_takes(model, "cache") else "past_key_values"


def last_logits_only(model) -> dict:
    """The forward argument that makes a causal LM compute logits at the last position only ({"logits_to_keep":
    1}), or {} for a model without it. A prompt pass needs no other: with a 150k-token vocabulary the logits of 8
    prompts of 500 tokens would take 2.4 GB in float32."""
    return {"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}


BUCKET_COST = 64  # what one more bucket of completions costs, in padded positions (shared_prompt_forward);
# on the 4M Qwen2 on CPU, 64 gave the fastest update of 16, 32 and 64


def shared_prompt_forward(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_index: torch.Tensor,
                          completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                          field: str = "logits", bucket_cost: int = BUCKET_COST) -> torch.Tensor:
    """The model's output `field` ("logits" for a causal LM, "last_hidden_state" for a bare transformer) at the
    position before each completion token: (n, T, D), where [:, t] is what the model saw when token t came next.

    prompt_ids, prompt_mask: (B, P) left-padded prompts. group_index: (n,) the prompt row of each completion.
    completion_ids, completion_mask: (n, T) right-padded completions.
    Only the prompts that the n completions answer are run, once each, and their keys and values are shared by
    the completions of their group: the same numbers as one forward pass over each full sequence (tested to 1e-5)
    for about 1/G of the prompt compute. Gradients flow through the shared keys and values into the prompt
    positions. Under activation checkpointing too: the caches are prefix_caches, which a layer recomputed in the
    backward reads and writes exactly as in its forward.

    The completions then run in buckets of rows of similar length, each cut to its longest row (length_buckets:
    sampled lengths vary widely; on a random 4M model, 64 rows of at most 64 tokens fill 2456 positions in 5
    buckets instead of 4096 in one). One prompt pass and one graph serve every bucket, so a single backward gives
    the same gradient as the unbucketed pass.
    """
    used, row_of = torch.unique(group_index, return_inverse=True)  # (u,), (n,)
    prompt_ids, prompt_mask = prompt_ids[used], prompt_mask[used]  # (u, P)
    keyword = cache_keyword(model)
    prompt_positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (u, P)
    last_only = last_logits_only(model) if field == "logits" else {}
    cache = prefix_cache()  # each forward below is given its cache and uses it whatever use_cache says; False
    # spares transformers' warning that checkpointing turns use_cache off
    prompt_lengths = prompt_mask.sum(-1)  # (u,)
    width = completion_ids.shape[1]
    every_row = [(torch.arange(len(row_of), device=row_of.device), width)]
    buckets = length_buckets(completion_mask.sum(-1).long(), bucket_cost) or every_row
    pieces = []
    with caches_through_checkpoints(model):
        last = getattr(model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions,
                             use_cache=False, **{keyword: cache}, **last_only), field)[:, -1]  # (u, D)
        for rows, bucket_width in buckets:
            picked = row_of[rows]  # (r,) the prompt of each row
            # each row gets its prompt's keys and values by index_select, not x[picked]: on CPU the backward of
            # advanced indexing with repeated rows accumulates in a thread-dependent order, and runs stop repeating
            bucket_cache = prefix_cache([(layer.written[0].index_select(0, picked),
                                         layer.written[1].index_select(0, picked)) for layer in cache.layers])
            ids, mask = completion_ids[rows, :bucket_width], completion_mask[rows, :bucket_width]  # (r, t)
            attention_mask = torch.cat([prompt_mask[picked], mask.to(prompt_mask.dtype)], dim=1)  # (r, P+t)
            positions = prompt_lengths[picked, None] + torch.arange(bucket_width, device=ids.device)  # (r, t)
            piece = getattr(model(input_ids=ids, attention_mask=attention_mask, position_ids=positions,
                                  use_cache=False, **{keyword: bucket_cache}), field)  # (r, t, D): t sees token t
            pieces.append(torch.nn.functional.pad(piece, (0, 0, 0, width - bucket_width)))  # (r, T, D)
    if len(pieces) == 1:
        outputs = pieces[0]  # (n, T, D)
    else:
        order = torch.cat([rows for rows, _ in buckets])  # (n,) the row at each sorted position
        outputs = torch.cat(pieces)[torch.argsort(order)]  # (n, T, D) back in row order
    first = last.index_select(0, row_of)[:, None]  # (n, 1, D): the state before each first token
    return torch.cat([first, outputs[:, :-1]], dim=1)  # (n, T, D): the state before token t


@functools.cache
def _prefix_layer_class():
    """PrefixLayer, defined on first use so that importing r1zero.models does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class PrefixLayer(DynamicLayer):
        """One layer's keys and values (r, heads, P, d) of a fixed prefix, which update returns followed by the new
        keys and values; or, without a prefix (the prompt pass), a layer that keeps the first keys and values
        written to it as `written` and returns them as they are. A DynamicLayer appends instead, so a layer that
        the backward recomputes (activation checkpointing) would see its prefix twice. Only the forward's own
        write is kept: a recomputation's would hold that recomputation's graph alive until the backward ends."""

        def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
            super().__init__()
            self.written = None
            if keys is not None:
                self.lazy_initialization(keys, values)
                self.keys, self.values = keys, values

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if self.is_initialized:
                return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)
            if self.written is None:
                self.written = (key_states, value_states)
            return key_states, value_states

    return PrefixLayer


def prefix_cache(prefixes: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
    """A transformers KV cache of PrefixLayers: with `prefixes` (keys, values) per layer, a cache that every
    forward reads them from and never grows; without, one that the prompt pass writes, a layer at a time."""
    from transformers.cache_utils import Cache

    layer = _prefix_layer_class()
    if prefixes is None:
        return Cache(layer_class_to_replicate=layer)
    return Cache(layers=[layer(keys, values) for keys, values in prefixes])


@contextlib.contextmanager
def caches_through_checkpoints(model):
    """transformers' checkpointed layers drop a KV cache (a cache they append to would be appended to again when
    the backward recomputes them) unless the layer says that it only reads it. A prefix_cache reads and writes the
    same when recomputed, so within this block every checkpointed layer keeps it."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            vars(layer).pop("_can_checkpoint_with_cache", None)


def length_buckets(lengths: torch.Tensor, bucket_cost: int) -> list[tuple[torch.Tensor, int]] | None:
    """The rows (n,) sorted by length and cut into buckets, each with its longest row's length as its width, so
    that the padded positions (rows x width, summed) plus bucket_cost per bucket are fewest; None when one bucket
    is best. Exact, by dynamic programming over the cut points of the sorted lengths (O(n^2), vectorised)."""
    import numpy as np

    count = len(lengths)
    order = torch.argsort(lengths, stable=True)
    widths = np.maximum(lengths[order].cpu().numpy(), 1).astype(np.int64)  # (n,) ascending
    best = np.zeros(count + 1, dtype=np.int64)  # best[j]: the cheapest cover of the j shortest rows
    start = np.zeros(count + 1, dtype=np.int64)  # where the last bucket of that cover starts
    for end in range(1, count + 1):  # the bucket start..end-1 is as wide as row end-1
        costs = best[:end] + (end - np.arange(end)) * widths[end - 1] + bucket_cost  # (end,) by start
        start[end] = int(np.argmin(costs))  # of equal costs, the earliest cut
        best[end] = costs[start[end]]
    cuts, end = [], count
    while end:
        cuts.append((int(start[end]), end))
        end = int(start[end])
    if len(cuts) == 1:
        return None
    return [(order[first:end], int(widths[end - 1])) for first, end in reversed(cuts)]


def full_sequence_forward(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_index: torch.Tensor,
                          completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                          field: str = "logits") -> torch.Tensor:
    """What shared_prompt_forward returns, (n, T, D) states before each completion token, from one forward over
    whole sequences without a KV cache, each completion after its own copy of its prompt: for FSDP ranks, which
    must all run the same forwards (the same collectives). The prompt costs once per completion, not per group."""
    count, width = completion_ids.shape
    ids, mask, positions = whole_sequences(prompt_ids, prompt_mask, group_index, completion_ids, completion_mask,
                                           torch.arange(count, device=completion_ids.device), width)  # (n, P+T)
    keep = {"logits_to_keep": width + 1} if field == "logits" and forward_takes(model, "logits_to_keep") else {}
    output = getattr(model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **keep),
                     field)  # (n, P+T or T+1, D)
    return output[:, -(width + 1):-1]  # (n, T, D): the last prompt token, then each completion token


def whole_sequences(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_index: torch.Tensor,
                    completion_ids: torch.Tensor, completion_mask: torch.Tensor, rows: torch.Tensor, width: int):
    """The rows' left-padded prompts followed by their completions cut to `width`: ids, attention mask and
    position ids, each (r, P+width)."""
    prompts = group_index[rows]  # (r,)
    ids = torch.cat([prompt_ids[prompts], completion_ids[rows, :width]], dim=1)  # (r, P+t)
    mask = torch.cat([prompt_mask[prompts], completion_mask[rows, :width].to(prompt_mask.dtype)], dim=1)  # (r, P+t)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def final_states_from_the_root(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_index: torch.Tensor,
                               completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """(n, T, H): the final norm's output before each completion token, from one forward of the whole model over
    whole sequences, logits at one position only. For FSDP: a sharded root runs its own forward, whose hooks
    gather the embeddings and the output head (kept gathered after the forward, as FSDP2 does for a root) and
    reduce their gradients, which calling the decoder and the head directly would skip."""
    captured = []
    handle = decoder_of(model).norm.register_forward_hook(lambda module, inputs, output: captured.append(output))
    count, width = completion_ids.shape
    ids, mask, positions = whole_sequences(prompt_ids, prompt_mask, group_index, completion_ids, completion_mask,
                                           torch.arange(count, device=completion_ids.device), width)
    try:
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1][:, -(width + 1):-1]  # (n, T, H): the last prompt token, then each completion token


def states_before_tokens(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_index: torch.Tensor,
                         completion_ids: torch.Tensor, completion_mask: torch.Tensor, field: str = "logits",
                         single_pass: bool = False) -> torch.Tensor:
    """(n, T, D): the model's `field` at the position before each completion token. Prompts shared through the KV
    cache (shared_prompt_forward), or, with single_pass, whole sequences in one forward (full_sequence_forward).
    The same numbers either way (tested)."""
    if single_pass:
        return full_sequence_forward(model, prompt_ids, prompt_mask, group_index, completion_ids, completion_mask,
                                     field)
    return shared_prompt_forward(model, prompt_ids, prompt_mask, group_index, completion_ids, completion_mask, field)


PLAIN_HEAD_MODELS = ("llama", "qwen2", "qwen3", "mistral", "gpt2", "olmo2", "smollm3")  # logits = lm_head(h)
CHUNK_MIN_VOCABULARY = 32768  # smaller vocabularies keep the whole logits: they are small, and chunking them only
# costs time (docs/memory.md, "Log-probability chunks")


def plain_output_head(model) -> torch.nn.Module | None:
    """The output layer when the model's logits are exactly head(last hidden state) (no softcapping or scaling):
    then log-probabilities can be computed from the hidden states chunk by chunk. None otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in ("final_logit_softcapping", "logit_scale",
                                                                           "logits_scaling")):
        return None
    return base.get_output_embeddings()


def decoder_of(model):
    """The transformer under the output head (LlamaModel inside LlamaForCausalLM; through a peft wrapper, whose
    LoRA layers sit inside it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def _head_logprobs(head, states: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
    """log pi(target) (c,) and, without gradient, the entropy (c,) of head(states) (c, H): float32 or wider."""
    logits = _widened(head(states))  # (c, V)
    logprobs, normaliser = _target_logprobs(logits, targets)
    return logprobs, _entropy(logits, normaliser) if with_entropy else None


def _widened(logits: torch.Tensor) -> torch.Tensor:
    """The logits in float32, or float64 when they are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(target) (c,), log Z (c,)) of logits (c, V) and targets (c,)."""
    normaliser = torch.logsumexp(logits, dim=-1)  # (c,)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - normaliser, normaliser


def _entropy(logits: torch.Tensor, normaliser: torch.Tensor) -> torch.Tensor:
    """H = log Z - sum_v p_v z_v (c,), without gradient, with one (c, V) buffer for p, then p * z, in place."""
    with torch.no_grad():
        detached, log_normaliser = logits.detach(), normaliser.detach()
        probabilities = (detached - log_normaliser[:, None]).exp_()  # (c, V)
        return log_normaliser - probabilities.mul_(detached).sum(-1)  # (c,)


def chunk_logits(states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(c, V) logits of a chunk of states (c, H) through a linear head (weight (V, H), already in the compute
    dtype), in float32 or wider."""
    return _widened(torch.nn.functional.linear(states.to(weight.dtype), weight, bias))  # (c, V)


class LinearHeadLogprobs(torch.autograd.Function):
    """log pi(y_k) (K,) and, without gradient, the entropy (K,) of softmax(z_k), z_k = weight @ s_k + bias, for K
    states s (K, H) and targets y (K,), chunk_tokens rows at a time. The backward recomputes each chunk's logits
    and turns them into their own gradient in place:

        d log pi(y_k) / d z_kv = [v = y_k] - p_kv,  so  dL/dz_k = g_k ([v = y_k] - p_k),  g_k = dL/d log pi(y_k)
        dL/ds_k = dL/dz_k @ weight,  dL/dweight = sum_k dL/dz_k^T s_k (accumulated in one (V, H) buffer)

    So one chunk's (c, V) logits live at a time (two in the forward with the entropy), and the weight's gradient is
    one buffer for all chunks, not one (V, H) tensor per chunk added up by autograd. Matrix products run in the
    autocast dtype when autocast is on (bfloat16 mixed precision), the softmax in float32 or wider."""

    @staticmethod
    def forward(ctx, states, weight, bias, targets, chunk_tokens: int, with_entropy: bool):
        device = states.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        wide = torch.float64 if weight.dtype == torch.float64 else torch.float32
        logprobs = states.new_empty(len(states), dtype=wide)  # (K,)
        normalisers = torch.empty_like(logprobs)  # (K,) log Z_k, kept for the backward
        entropy = torch.empty_like(logprobs) if with_entropy else None  # (K,)
        with torch.autocast(device, enabled=False):
            head_weight, head_bias = weight.to(compute), None if bias is None else bias.to(compute)
            for start in range(0, len(states), chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                logits = chunk_logits(states[rows], head_weight, head_bias)  # (c, V)
                logprobs[rows], normalisers[rows] = _target_logprobs(logits, targets[rows])
                if with_entropy:
                    entropy[rows] = _entropy(logits, normalisers[rows])
        ctx.save_for_backward(states, weight, bias, targets, normalisers)
        ctx.chunk_tokens, ctx.compute = chunk_tokens, compute
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        states, weight, bias, targets, normalisers = ctx.saved_tensors
        needs_states, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_states = torch.zeros_like(states) if needs_states else None  # (K, H)
        grad_weight = torch.zeros(weight.shape, dtype=normalisers.dtype, device=weight.device) \
            if needs_weight else None  # (V, H), accumulated over the chunks in float32 or wider
        grad_bias = torch.zeros(bias.shape, dtype=normalisers.dtype, device=bias.device) if needs_bias else None
        with torch.autocast(states.device.type, enabled=False):
            head_weight, head_bias = weight.to(ctx.compute), None if bias is None else bias.to(ctx.compute)
            for start in range(0, len(states), ctx.chunk_tokens):
                rows = slice(start, start + ctx.chunk_tokens)
                chunk = states[rows].to(ctx.compute)  # (c, H)
                gradient = chunk_logits(chunk, head_weight, head_bias)  # (c, V) the logits, then in place:
                gradient.sub_(normalisers[rows, None]).exp_()  # p (c, V)
                gradient.mul_(-grad_logprobs[rows, None]).scatter_add_(1, targets[rows, None],
                                                                      grad_logprobs[rows, None])  # dL/dz
                if needs_bias:
                    grad_bias += gradient.sum(0)
                gradient = gradient.to(ctx.compute)
                if needs_states:
                    grad_states[rows] = gradient @ head_weight  # (c, H)
                if needs_weight and gradient.dtype == grad_weight.dtype:
                    grad_weight.addmm_(gradient.t(), chunk)  # (V, H) += (V, c) @ (c, H), in place
                elif needs_weight:
                    grad_weight += gradient.t() @ chunk  # bfloat16 products, summed in float32
        return (grad_states, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None, None)


def chunked_head_logprobs(hidden: torch.Tensor, head, tokens: torch.Tensor, mask: torch.Tensor, chunk_tokens: int,
                          with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (n, T) of `tokens` from the hidden states (n, T, H) before them, through the output
    `head`, chunk_tokens real tokens at a time: neither the (n, T, V) logits nor their softmax is ever held, only
    one chunk's (chunk_tokens, V). A plain torch.nn.Linear head goes through LinearHeadLogprobs (its backward turns
    each recomputed chunk into its gradient in place); any other head (a LoRA-wrapped one) has each chunk
    checkpointed (its logits recomputed in the backward by autograd). Padding (mask 0) is skipped and gets
    log-probability 0 and entropy 0."""
    count, width, size = hidden.shape
    positions = mask.reshape(-1).nonzero().squeeze(-1)  # (K,) the real tokens
    states = hidden.reshape(-1, size).index_select(0, positions)  # (K, H)
    targets = tokens.reshape(-1).index_select(0, positions).long()  # (K,)
    if type(head) is torch.nn.Linear and len(positions):
        logprobs, entropy = LinearHeadLogprobs.apply(states, head.weight, head.bias, targets, chunk_tokens,
                                                     with_entropy)
        logprob_pieces, entropy_pieces = [logprobs], [entropy]
    else:
        logprob_pieces, entropy_pieces = [], []
        for start in range(0, len(positions), chunk_tokens):
            piece = (head, states[start:start + chunk_tokens], targets[start:start + chunk_tokens], with_entropy)
            if states.requires_grad:
                logprobs, entropy = torch.utils.checkpoint.checkpoint(_head_logprobs, *piece, use_reentrant=False)
            else:
                logprobs, entropy = _head_logprobs(*piece)
            logprob_pieces.append(logprobs)
            entropy_pieces.append(entropy)
    dtype = logprob_pieces[0].dtype if logprob_pieces else torch.float32

    def scatter(pieces):  # (K,) values back to their (n, T) places, 0 on padding
        flat = torch.zeros(count * width, dtype=dtype, device=hidden.device)
        return (flat.index_copy(0, positions, torch.cat(pieces)) if pieces else flat).view(count, width)

    return scatter(logprob_pieces), scatter(entropy_pieces) if with_entropy else None


def completion_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_index: torch.Tensor,
                        completion_ids: torch.Tensor, completion_mask: torch.Tensor, with_entropy: bool = False,
                        chunk_tokens: int = 0, single_pass: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of completion tokens (and their entropy, without gradient), (n, T) each (or None).

    chunk_tokens > 0 (with a plain output head and a vocabulary of CHUNK_MIN_VOCABULARY tokens or more): from
    the final hidden states through the head, chunk_tokens tokens at a time (chunked_head_logprobs); 0: the whole
    (n, T, V) logits at once. The states come from
    states_before_tokens (prompts shared through the KV cache, or whole sequences under checkpointing or with
    single_pass). The same values and gradients either way (tested)."""
    head = plain_output_head(model) if chunk_tokens else None
    if head is not None and head.weight.shape[0] < CHUNK_MIN_VOCABULARY:
        head = None
    if head is not None and single_pass:  # FSDP: through the root's own forward
        hidden = final_states_from_the_root(model, prompt_ids, prompt_mask, group_index, completion_ids,
                                            completion_mask)  # (n, T, H)
        return chunked_head_logprobs(hidden, head, completion_ids, completion_mask, chunk_tokens, with_entropy)
    if head is not None:
        hidden = states_before_tokens(decoder_of(model), prompt_ids, prompt_mask, group_index, completion_ids,
                                      completion_mask, "last_hidden_state")  # (n, T, H)
        return chunked_head_logprobs(hidden, head, completion_ids, completion_mask, chunk_tokens, with_entropy)
    logits = states_before_tokens(model, prompt_ids, prompt_mask, group_index, completion_ids, completion_mask,
                                  "logits", single_pass)  # (n, T, V): predicts token t
    logprobs = token_logprobs(logits, completion_ids)  # (n, T)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach())  # (n, T)
    return logprobs, entropy


def full_sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           prompt_width: int) -> torch.Tensor:
    """The plain reference for `completion_logprobs`: one forward pass over each whole (N, P+T) sequence."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, P+T)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    return token_logprobs(logits[:, prompt_width - 1:-1], input_ids[:, prompt_width:])  # (N, T)


def load_policy(model_path: Path, resume_from: Path | None, dtype: str | torch.dtype, device, lora_rank: int = 0,
                lora_alpha: float = 32.0, lora_dropout: float = 0.0, lora_target_modules=("all-linear",),
                gradient_checkpointing: bool = False):
    """The trainable policy: the model at model_path, or the checkpoint resume_from; with lora_rank > 0 the base
    model with LoRA adapters (fresh, or the checkpoint's), only the adapters trainable. lora_target_modules:
    module names, or ["all-linear"] for every linear layer but the output head. gradient_checkpointing: each
    decoder layer keeps only its input and recomputes the rest in the backward (enable_checkpointing)."""
    if not lora_rank:
        return enable_checkpointing(load_model(resume_from or model_path, dtype, device), gradient_checkpointing)
    from peft import LoraConfig, PeftModel, get_peft_model

    base = enable_checkpointing(load_model(model_path, dtype, device), gradient_checkpointing)
    if resume_from is not None:
        return PeftModel.from_pretrained(base, resume_from, is_trainable=True)
    targets = list(lora_target_modules)
    lora = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


def enable_checkpointing(model, enabled: bool = True):
    """transformers' activation checkpointing of every decoder layer, non-reentrant (so LoRA's frozen inputs
    need no hooks, and the checkpointed layers leave FSDP's hooks outside); returns the model."""
    if not enabled:
        return model
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def save_model(model, tokenizer, destination: Path) -> None:
    """Write to a temporary folder beside `destination`, then rename: a crash never leaves half a model.

    A LoRA model is saved twice: its adapter in destination/adapter/ (load with peft onto the base model) and,
    merged into the base weights, as a plain transformers model in destination/ itself. The merge happens in
    place, so call this last."""
    import shutil

    staging = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):  # a peft model
        model.save_pretrained(staging / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if destination.exists():
        shutil.rmtree(destination)
    staging.rename(destination)


def plain_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights as a plain transformers model of the same architecture names them: for a LoRA (peft) model,
    copies of its base weights with the adapters' deltas added (the policy itself is left as it is)."""
    if not hasattr(model, "peft_config"):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight.detach()
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).detach()
            merged[f"{name}.weight"] = weight
    state = {}
    for key, value in base.state_dict().items():
        if ".lora_" not in key:
            key = key.replace(".base_layer.", ".")
            state[key] = merged.get(key, value)
    return state
