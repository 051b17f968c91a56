"""The memory model (r1zero.memory): parameter counts from config.json, each term by hand, and the warning of
`r1zero train --check` before any weights load."""

import json
import subprocess
import sys

import pytest

from r1zero.cli import main
from r1zero.memory import ModelShape, StepShape, shape_of, step_memory, vllm_engine_bytes

QWEN25_05B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                  max_position_embeddings=32768)


def test_parameters_counted_from_the_config_match_the_published_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_05B))
    shape = shape_of(tmp_path)
    # per layer: q 896x896 + 896, k and v 896x128 + 128 each, o 896x896, MLP 3 x 896 x 4864, two norms of 896:
    # 14,912,384; x 24 layers, + the tied embeddings 151,936 x 896 and the final norm: 494,032,768 (Qwen2.5-0.5B)
    assert shape.parameters == 494_032_768
    assert shape.largest_unit == 151936 * 896 + 896  # the root: embeddings (tied head) and the final norm
    untied = {**QWEN25_05B, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(untied))
    assert shape_of(tmp_path).parameters == 494_032_768 + 151936 * 896


def test_each_term_by_hand():
    # a made-up model: 1,000 parameters, hidden 4, 2 layers, MLP 8, vocabulary 10, 2 heads, 1 key-value head
    model = ModelShape(1000, 4, 2, 8, 10, 2, 1, 300)
    step = StepShape(rows=3, prompt_tokens=5, completion_tokens=7, group_size=3)
    plain = step_memory(model, step, parameter_bytes=4, reference_bytes=2)
    assert (plain.weights, plain.gradients, plain.optimizer, plain.reference) == (4000, 4000, 8000, 2000)
    # per token and layer: 6 x 4 + 2 x 1 x 2 + 4 x 8 + 2 heads x 12 tokens = 84 numbers; tokens: 3 x 7 completions +
    # one prompt of 5 for the group = 26; x 2 layers x 4 bytes
    assert plain.activations == 26 * 84 * 2 * 4
    assert plain.logits == 3 * 7 * 10 * 4 * 3  # all completion positions' logits, three times
    checkpointed = step_memory(model, step, 4, 2, gradient_checkpointing=True, logprob_chunk_tokens=5)
    # the same 26 tokens, each keeping 4 numbers a layer for 2 layers, plus one layer's 84
    assert checkpointed.activations == 26 * (4 * 2 + 84) * 4
    assert checkpointed.logits == 5 * 10 * 4 * 3  # one chunk
    sharded = step_memory(model, step, 4, 2, shards=2)
    assert (sharded.weights, sharded.optimizer, sharded.reference, sharded.gathered) == (2000, 4000, 1000, 2400)
    assert sharded.activations == 3 * 12 * 84 * 2 * 4  # FSDP ranks run whole sequences: 3 x (5 + 7) tokens
    lora = step_memory(model, step, 4, 0, trainable_fraction=0.1)
    assert (lora.gradients, lora.optimizer, lora.reference) == (400, 800, 0)
    assert plain.checkpoint == sharded.checkpoint == 0  # torch.save streams; FSDP ranks write their own shards
    assert plain.total == sum(plain)  # the step's additions are the larger
    # replicated ranks: rank 0 copies its AdamW state (8,000 bytes) to send it to the driver for the checkpoint;
    # the checkpointed step's activations and logits (26 x 92 x 4 + 5 x 10 x 4 x 3 = 10,168 bytes) exceed that,
    # so the step stays the peak; a one-token step's do not, and the checkpoint is the peak
    replicated = step_memory(model, step, 4, 2, gradient_checkpointing=True, logprob_chunk_tokens=5, replicas=2)
    assert replicated.checkpoint == 8000
    resting = 4000 + 4000 + 8000 + 2000 + replicated.baseline
    assert replicated.total == resting + max(26 * 92 * 4 + 600, 8000) == resting + 10168
    small = step_memory(ModelShape(1000, 4, 1, 8, 10, 2, 1, 300), StepShape(1, 1, 1, 1), 4, 0, replicas=2)
    # one token: 1 x 84 numbers x 1 layer x 4 bytes of activations and 1 x 10 x 4 x 3 of logits, under 8,000
    assert small.total == 4000 + 4000 + 8000 + small.baseline + 8000
    # a colocated vLLM engine: on CPU its float32 copy of the 1,000 weights plus the 1 GiB KV cache it starts with;
    # on a GPU of 80e9 bytes the 0.3 share it reserves; a given cache size: weights plus that
    assert vllm_engine_bytes(model, 4, 0.0, 0.3, 24e9, on_gpu=False) == 4000 + 2**30
    assert vllm_engine_bytes(model, 2, 0.0, 0.3, 80e9, on_gpu=True) == 0.3 * 80e9
    assert vllm_engine_bytes(model, 2, 0.5, 0.3, 80e9, on_gpu=True) == 2000 + 2**29


def test_check_warns_before_loading_when_a_step_would_not_fit(tmp_path, llama_dir, capsys):
    # a 7B-shaped model folder: its config.json and a tokenizer, no weights (the check reads none)
    import shutil

    config = {**QWEN25_05B, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
              "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama_dir / name, tmp_path / name)
    assert main(["train", "--check", "--model", str(tmp_path), "--kl-coef", "0.04", "--max-new-tokens", "1024"]) == 0
    captured = capsys.readouterr()
    assert "estimated peak memory of a training step:" in captured.out
    warning = next(line for line in captured.err.splitlines() if "r1zero: warning: memory:" in line)
    assert "more than this machine's RAM" in warning or "more than GPU" in warning
    for advice in ("--gradient-checkpointing", "--train-processes K --fsdp", "--lora-rank"):
        assert advice in warning
    estimate = float(captured.out.split("estimated peak memory of a training step: ")[1].split(" GB")[0])
    assert estimate > 7.6 * 16  # 7.6B parameters x (4 weights + 4 gradients + 8 AdamW) bytes, at least
    # the built-in model fits: no warning
    assert main(["train", "--check"]) == 0
    assert "warning: memory" not in capsys.readouterr().err


def test_a_colocated_vllm_engine_counts_in_the_estimate():
    from r1zero.config import TrainConfig
    from r1zero.models import SHIPPED_MODEL
    from r1zero.preflight import check_memory

    parameters = shape_of(SHIPPED_MODEL).parameters
    plain, _ = check_memory(TrainConfig(), SHIPPED_MODEL, 70)
    colocated, _ = check_memory(TrainConfig(rollout_engine="vllm"), SHIPPED_MODEL, 70)
    in_workers, _ = check_memory(TrainConfig(rollout_engine="vllm", rollout_workers=2), SHIPPED_MODEL, 70)
    assert plain.engine == 0 and in_workers.engine == 0  # r1zero's engine holds nothing more; workers hold theirs
    assert colocated.engine == parameters * 4 + 2**30  # its float32 weights and the 1 GiB cache (on this CPU)
    assert colocated.total == plain.total + colocated.engine



HOLES = """
import gc, sys, torch
from r1zero.memory import return_freed_memory
def resident() -> float:  # bytes, from /proc (psutil is not a dependency)
    return int(open("/proc/self/statm").read().split()[1]) * 4096
threshold, block = sys.argv[1], int(sys.argv[2]) << 20
if threshold != "dynamic":
    assert return_freed_memory(int(threshold))
first = torch.empty(30 << 20, dtype=torch.uint8)
del first  # glibc raises its dynamic threshold to 30 MB when this one is freed
before = resident()
blocks = [torch.ones(block, dtype=torch.uint8) for _ in range(40)]  # 40 blocks, touched
last = blocks.pop()  # kept alive: it sits above the others, so the heap cannot shrink past it
del blocks
gc.collect()
print((resident() - before) / (1 << 20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_freed_blocks_go_back_to_the_system():
    # 39 freed blocks of 20 MB: with glibc's dynamic threshold (raised to 30 MB) they were served from the heap
    # under a live one and stay resident (about 39 x 20 = 780 MB); with the threshold fixed at 16 MiB each had its
    # own mapping, gone when freed, and only the live block remains (20 MB). Blocks of 8 MB (a 0.5B model's MLP
    # shard on 2 FSDP ranks) stay resident under 16 MiB (39 x 8 = 312 MB) and go back under 1 MiB.
    from r1zero.memory import FINE_MMAP_THRESHOLD_BYTES, MMAP_THRESHOLD_BYTES

    def kept(threshold, block_mb: int) -> float:
        done = subprocess.run([sys.executable, "-c", HOLES, str(threshold), str(block_mb)], capture_output=True,
                              text=True, check=True)
        return float(done.stdout.split()[-1])

    assert kept("dynamic", 20) > 600
    assert kept(MMAP_THRESHOLD_BYTES, 20) < 45
    assert kept(MMAP_THRESHOLD_BYTES, 8) > 250
    assert kept(FINE_MMAP_THRESHOLD_BYTES, 8) < 30


def test_large_models_and_fsdp_ranks_return_blocks_of_one_mebibyte():
    from r1zero.memory import mmap_threshold

    assert mmap_threshold(4_000_000) == 16 << 20  # the built-in model: 1 MiB would slow its steps by 30-40%
    assert mmap_threshold(4_000_000, sharded=True) == 1 << 20
    assert mmap_threshold(99_999_999) == 16 << 20
    assert mmap_threshold(100_000_000) == 1 << 20
    assert mmap_threshold(494_032_768) == 1 << 20  # the 0.5B shape: its 14.7 MB tensors must not reach the heap
