"""How much memory a training step needs, per process, estimated from the model's config.json and the settings
alone (no weights are read): what `r1zero train --check` prints and warns about, and what benchmarks/memory.py
checks against measured peaks.

    estimate = step_memory(shape_of(model_dir), StepShape(rows=32, prompt_tokens=70, completion_tokens=128), ...)
    print(estimate.describe())

The model (bytes, b the parameter dtype's size, P parameters, K the FSDP ranks, L layers, H hidden, I MLP width,
V vocabulary, S = prompt + completion tokens per row, R rows per micro-batch):
    weights P*b, gradients P*b (LoRA: only the adapters'), AdamW 2*P*b (LoRA: the adapters'), reference P*b_ref;
    all four divided by K with FSDP;
    activations, per token and layer: (6H + 2H_kv + 4I) numbers kept for the backward, and the attention scores
    (heads * S numbers per token) -- or, with checkpointing, H per layer plus one layer's full set while it is
    recomputed; R*S tokens (rows count their prompt once per group, except on FSDP ranks: once each);
    logits: R*T*V*4 bytes, three times (the logits, their float32 softmax and its gradient), or one chunk's
    logprob_chunk_tokens*V*4*3 with chunked log-probabilities;
    checkpoint: what writing a checkpoint adds to a process's resting state (weights, gradients, AdamW,
    reference): 2*P*b with replicated learner ranks (rank 0's AdamW state, copied to send to the driver), nothing
    in one process (torch.save streams the tensors) or on FSDP ranks (each writes its own shards).
The peak is the resting state plus the larger of the step's activations, logits and gathered unit, and the
checkpoint's addition.
The model ignores allocator slack and the interpreter (~0.5 GB measured on the CPU): benchmarks/memory.py gives
how far each term is from the measured peak.

Shapes: the letters above.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import NamedTuple

GB = 1e9
BASELINE_BYTES = 0.6 * GB  # the interpreter, torch, transformers and the tokenizer, measured on CPU (RSS at start)
MMAP_THRESHOLD_BYTES = 16 << 20
FINE_MMAP_THRESHOLD_BYTES = 1 << 20  # FSDP learner ranks and large models: see mmap_threshold
LARGE_MODEL_PARAMETERS = 100_000_000
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def return_freed_memory(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make the C allocator give every freed block of threshold_bytes or more back to the system at once; True
    where it could (glibc), False elsewhere (nothing changes there).

    Why: glibc serves a block above its threshold with its own mmap and unmaps it when freed, but by default it
    raises the threshold to the size of each such block freed, up to 32 MB. After the first update a large
    model's per-layer gradients and activations come from the heap, where freed holes stay resident, so the
    process holds far more than its live tensors. Fixing the threshold turns glibc's dynamic one off
    (mallopt(3)); the trim threshold is set as the dynamic rule would (twice the mmap threshold). Too low a
    threshold costs fresh pages for every mid-sized tensor, hence one per model size: mmap_threshold. The figures
    behind both are in docs/memory.md, "The allocator threshold"."""
    try:
        library = ctypes.CDLL(None)
        mallopt = library.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    trimmed = mallopt(ctypes.c_int(M_TRIM_THRESHOLD), ctypes.c_int(2 * threshold_bytes))  # as glibc's own
    return bool(trimmed and mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold_bytes)))


def mmap_threshold(parameters: int, sharded: bool = False) -> int:
    """The return_freed_memory threshold of a process that trains a model of `parameters` (sharded: its shard,
    on an FSDP rank): FINE_MMAP_THRESHOLD_BYTES (1 MiB) on FSDP ranks and for models of LARGE_MODEL_PARAMETERS or
    more, else MMAP_THRESHOLD_BYTES (16 MiB).

    A 16 MiB threshold helps only tensors that are larger than it: a large model's per-layer tensors (a
    0.5B model's are 9-23 MB, depending on rows, sharing and sharding) fall under it and then come from glibc's
    heap, where freed holes stay resident; at 1 MiB they are returned when freed, at the cost of fresh pages for
    each. Small models keep 16 MiB: they never need the memory, and fresh pages would slow their steps. The
    measurements behind the choice: docs/memory.md, "The allocator threshold"."""
    return FINE_MMAP_THRESHOLD_BYTES if sharded or parameters >= LARGE_MODEL_PARAMETERS else MMAP_THRESHOLD_BYTES


def return_freed_memory_for(model, sharded: bool = False) -> bool:
    """return_freed_memory at the threshold mmap_threshold gives `model` (a torch module; sharded: on an FSDP
    rank), for a process that trains it."""
    return return_freed_memory(mmap_threshold(sum(p.numel() for p in model.parameters()), sharded))


class ModelShape(NamedTuple):
    """What the estimate needs of a transformer's config.json."""

    parameters: int
    hidden: int
    layers: int
    intermediate: int
    vocabulary: int
    heads: int
    kv_heads: int
    largest_unit: int  # parameters of the largest FSDP unit (a decoder layer, or the root: embeddings and head)


def shape_of(model_dir: str | Path) -> ModelShape:
    """The shape of a Llama-style decoder from its config.json (nested text_config too), parameters counted."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config") or config
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    intermediate = config.get("intermediate_size", 4 * hidden)
    vocabulary, heads = config["vocab_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q and o, k and v
    attention += (heads + 2 * kv_heads) * head_dim if config.get("attention_bias", config.get("model_type") == "qwen2") \
        else 0
    layer = attention + 3 * hidden * intermediate + 2 * hidden  # SwiGLU MLP, two norms
    embeddings = vocabulary * hidden
    root = embeddings * (1 if config.get("tie_word_embeddings", False) else 2) + hidden
    return ModelShape(layers * layer + root, hidden, layers, intermediate, vocabulary, heads, kv_heads,
                      max(layer, root))


class StepShape(NamedTuple):
    """The tokens of one micro-batch of the update."""

    rows: int  # completions per micro-batch (per rank with data parallelism)
    prompt_tokens: int  # per prompt
    completion_tokens: int  # at most, per completion
    group_size: int = 1  # completions sharing one prompt (its keys and values; not on FSDP ranks)


class MemoryEstimate(NamedTuple):
    """Bytes per process of a training step at its peak."""

    weights: float
    gradients: float
    optimizer: float
    reference: float
    activations: float
    logits: float
    gathered: float  # FSDP: the largest unit's full parameters while it runs
    engine: float = 0.0  # a colocated vLLM engine: its own weights and KV cache (vllm_engine_bytes)
    baseline: float = BASELINE_BYTES
    checkpoint: float = 0.0  # what writing a checkpoint adds to the resting state (not at the same time as a step)

    @property
    def total(self) -> float:
        """The peak: the resting state plus the larger of the step's own additions and the checkpoint's."""
        resting = self.weights + self.gradients + self.optimizer + self.reference + self.engine + self.baseline
        return resting + max(self.activations + self.logits + self.gathered, self.checkpoint)

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value / GB:.2f}" for name, value in self._asdict().items() if value)
        return f"{self.total / GB:.1f} GB ({parts})"


def step_memory(model: ModelShape, step: StepShape, parameter_bytes: int = 4, reference_bytes: int = 0,
                trainable_fraction: float = 1.0, gradient_checkpointing: bool = False, logprob_chunk_tokens: int = 0,
                shards: int = 1, activation_bytes: int = 4, replicas: int = 1) -> MemoryEstimate:
    """The estimate of the module docstring. reference_bytes 0: no reference model. trainable_fraction: the
    share of parameters that get gradients and AdamW moments (LoRA: the adapters'). shards: FSDP ranks (1: none).
    replicas: learner ranks without FSDP (1: the update runs in the training process)."""
    weights = model.parameters * parameter_bytes / shards
    trained = model.parameters * trainable_fraction * parameter_bytes / shards
    sequence = step.prompt_tokens + step.completion_tokens
    prompt_rows = step.rows if shards > 1 else step.rows / max(1, step.group_size)  # FSDP: whole sequences
    tokens = step.rows * step.completion_tokens + prompt_rows * step.prompt_tokens
    if gradient_checkpointing:  # each layer keeps its input, one layer is recomputed
        per_layer = model.hidden * model.layers + per_token_numbers(model, sequence)
    else:
        per_layer = per_token_numbers(model, sequence) * model.layers
    activations = tokens * per_layer * activation_bytes
    positions = step.rows * step.completion_tokens if not logprob_chunk_tokens else \
        min(logprob_chunk_tokens, step.rows * step.completion_tokens)
    logits = positions * model.vocabulary * 4 * 3
    gathered = model.largest_unit * parameter_bytes * 2 if shards > 1 else 0.0  # a unit's full weights and grads
    checkpoint = 2 * trained if replicas > 1 else 0.0  # rank 0's AdamW state, copied to go to the driver
    return MemoryEstimate(weights, trained, 2 * trained, model.parameters * reference_bytes / shards, activations,
                          logits, gathered, checkpoint=checkpoint)


def vllm_engine_bytes(model: ModelShape, weight_bytes: int, kv_cache_gib: float, memory_share: float,
                      capacity: float, on_gpu: bool) -> float:
    """What a vLLM engine in the training process holds besides training's state: on a GPU the share of its
    memory it reserves (gpu_memory_utilization x the GPU's memory, its weights and KV cache inside it), unless the
    KV cache's size is given (then the weights plus it); on a CPU its copy of the weights plus the KV cache
    (1 GiB unless given, as r1zero.rollout.vllm_engine starts it)."""
    weights = model.parameters * weight_bytes
    if kv_cache_gib:
        return weights + kv_cache_gib * 2**30
    return memory_share * capacity if on_gpu else weights + 2**30


def per_token_numbers(model: ModelShape, sequence: int) -> float:
    """Numbers a decoder layer keeps per token for its backward: norms' inputs, q, k, v, attention output,
    residuals, the MLP's gate, up, their product and the activation, and the attention scores of the token's row."""
    head_dim = model.hidden // model.heads
    return 6 * model.hidden + 2 * model.kv_heads * head_dim + 4 * model.intermediate + model.heads * sequence


def machine_memory(device: str) -> tuple[float, str]:
    """(bytes, what) of the memory a step may use: the GPU's on CUDA, else the machine's RAM."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        index = int(device.split(":")[1]) if ":" in device else 0
        return float(torch.cuda.get_device_properties(index).total_memory), f"GPU {index}"
    import os

    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "this machine's RAM"


def advice(config, estimate: MemoryEstimate) -> list[str]:
    """The settings that would bring the estimate down, the largest terms first."""
    tips = []
    if estimate.logits > 0.5 * GB and not config.logprob_chunk_tokens:
        tips.append(f"--logprob-chunk-tokens 256 (logits {estimate.logits / GB:.1f} GB)")
    if estimate.activations > 1 * GB and not config.gradient_checkpointing:
        tips.append(f"--gradient-checkpointing (activations {estimate.activations / GB:.1f} GB)")
    if estimate.activations > 1 * GB:
        tips.append("a smaller --microbatch-size (activations grow with the rows of a micro-batch)")
    if config.train_processes < 2 or not config.fsdp:
        tips.append(f"--train-processes K --fsdp (weights, gradients, AdamW and reference, "
                    f"{(estimate.weights + estimate.gradients + estimate.optimizer + estimate.reference) / GB:.1f} "
                    f"GB, divided by K)")
    if not config.lora_rank:
        tips.append("--lora-rank 16 (gradients and AdamW state for the adapters only)")
    if estimate.engine:
        tips.append(f"--rollout-workers N (the vLLM engine, {estimate.engine / GB:.1f} GB, then runs in other "
                    f"processes), or a smaller --vllm-kv-cache-gib / --vllm-memory")
    return tips
