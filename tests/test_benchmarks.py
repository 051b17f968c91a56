"""The FLOP accounting of benchmarks/step_floor.py (which matrix products a step cannot do without) and the memory
readings of benchmarks/memory.py."""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def floor():
    sys.path.insert(0, str(BENCHMARKS))  # step_floor imports step_vs_trl beside it
    try:
        yield importlib.import_module("step_floor")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_decode_rows_counts_the_rows_each_decode_step_runs(floor):
    # token 0 comes from the prefill, token k from decode step k: a 3-token row needs steps 1 and 2, a 2-token row
    # step 1, a 1-token row none
    assert floor.decode_rows([1, 3, 2]) == [2, 1]
    assert floor.decode_rows([4, 4]) == [2, 2, 2]
    assert floor.decode_rows([1, 1]) == []


def test_forward_products_and_their_flops(floor):
    widths = floor.Widths(hidden=4, intermediate=8, query=4, key_value=2, vocabulary=5, layers=2)
    products = floor.forward_products(widths, positions=3, logits=1)
    # per layer, multiply-adds of 3 positions: q 3*4*4=48, k 3*4*2=24, v 24, o 3*4*4=48, gate 3*4*8=96, up 96,
    # down 3*8*4=96 -> 432; two layers 864; logits at 1 position 1*4*5=20 -> 884 multiply-adds, 1768 FLOPs
    assert floor.flops(products) == 1768
    assert products[-1] == (1, 4, 5)
    fused = floor.forward_products(widths, positions=3, logits=1, fused=True)
    # q/k/v as one (3, 4, 8) product and gate/up as one (3, 4, 16): fewer products, the same work
    assert len(fused) == 2 * 4 + 1 and (3, 4, 8) in fused and (3, 4, 16) in fused
    assert floor.flops(fused) == 1768


def test_backward_has_two_products_per_forward_one(floor):
    # (M, K, N) = (3, 4, 8): the input's gradient (3, 8) x (8, 4), the weight's (4, 3) x (3, 8)
    assert floor.backward_products([(3, 4, 8)]) == [(3, 8, 4), (4, 3, 8)]
    widths = floor.Widths(hidden=4, intermediate=8, query=4, key_value=2, vocabulary=5, layers=2)
    forward = floor.forward_products(widths, positions=3, logits=2)
    assert floor.flops(floor.backward_products(forward)) == 2 * floor.flops(forward)


def test_step_products_follow_the_phases(floor):
    widths = floor.Widths(hidden=4, intermediate=8, query=4, key_value=2, vocabulary=5, layers=1)
    # prompts of 2 and 3 tokens; completions of 1 and 3 tokens
    phases = floor.step_products(widths, [2, 3], [1, 3])
    per_position = 2 * (4 * 4 + 2 * 4 * 2 + 4 * 4 + 3 * 4 * 8)  # 176 FLOPs of the layer per position
    logit = 2 * 4 * 5  # 40 FLOPs per logit
    # rollout: the prefill (5 prompt positions, 2 logits), then decode steps 1 and 2 with 1 row each
    assert floor.flops(phases.rollout) == 5 * per_position + 2 * logit + 2 * (per_position + logit)
    # scoring: 5 prompt positions + completion inputs (0 + 2), logits at the 4 completion tokens
    assert floor.flops(phases.reference) == 7 * per_position + 4 * logit
    assert floor.flops(phases.update) == 3 * floor.flops(phases.reference)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc/PID/status")
def test_memory_benchmark_reads_the_peak_and_the_own_pages_of_a_process():
    # a child touches 300 MB (one block, mmap'd by glibc), frees it, and reads benchmarks/memory.py's status_gb of
    # itself before, with the block and after: its own pages rise by about 0.31 GB (300 x 2^20 bytes) and fall
    # back; the kernel's high-water mark keeps the peak after the block is gone (to within the few hundred kB the
    # child allocated between its reads: the kernel records the mark when the block is unmapped)
    import json
    import subprocess

    child = ("import json, sys; sys.path.insert(0, sys.argv[1]); from memory import status_gb; import os; "
             "numbers = [status_gb(os.getpid())]; block = b'x' * (300 << 20); numbers.append(status_gb(os.getpid())); "
             "del block; numbers.append(status_gb(os.getpid())); print(json.dumps(numbers))")
    output = subprocess.run([sys.executable, "-c", child, str(BENCHMARKS)], capture_output=True, text=True, check=True)
    (peak_before, own_before), (peak_with, own_with), (peak_after, own_after) = json.loads(output.stdout)
    assert 0.30 < own_with - own_before < 0.33
    assert abs(own_after - own_before) < 0.02
    assert peak_with - peak_before > 0.30 and abs(peak_after - peak_with) < 0.001
