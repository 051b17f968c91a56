"""The FLOP accounting of benchmarks/step_floor.py (which matrix products a step cannot do without), the memory
readings of benchmarks/memory.py, and benchmarks/provenance.py (the order sides are measured in, the spread of
repeats, the results files)."""

import importlib
import importlib.util
import json
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


@pytest.fixture(scope="module")
def provenance():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("provenance")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_alternate_reverses_the_order_every_other_round(provenance):
    assert provenance.alternate(["trl", "r1zero"], 3) == [
        (0, "trl"), (0, "r1zero"), (1, "r1zero"), (1, "trl"), (2, "trl"), (2, "r1zero")]
    assert provenance.alternate(["a", "b", "c"], 2) == [
        (0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a")]
    assert provenance.alternate(["a", "b"], 0) == []


def test_spread_is_the_median_and_range_of_the_repeats(provenance):
    # sorted 1, 2, 3, 10: the median is the mean of the middle two
    assert provenance.spread([3.0, 10.0, 1.0, 2.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert provenance.spread(iter([4.0, 0.5, 2.0])) == {"median": 2.0, "min": 0.5, "max": 4.0, "n": 3}
    assert provenance.spread([7.0]) == {"median": 7.0, "min": 7.0, "max": 7.0, "n": 1}


def test_show_gives_the_median_and_the_range_when_there_are_repeats(provenance):
    assert provenance.show({"median": 1.234, "min": 1.2, "max": 1.31, "n": 3}) == "1.23 (1.20-1.31)"
    assert provenance.show({"median": 1.234, "min": 1.234, "max": 1.234, "n": 1}) == "1.23"
    assert provenance.show(provenance.spread([100.4, 99.6, 101.0]), 0) == "100 (100-101)"
    assert provenance.show({"median": 0.0123, "min": 0.01, "max": 0.02, "n": 2}, 3) == "0.012 (0.010-0.020)"
    assert provenance.show(None) == "-"
    assert provenance.show(2.5) == "2.50"
    assert provenance.show(7) == "7"


def test_cpu_description_keeps_only_the_kernel_picking_flags(provenance):
    model, flags = provenance.cpu_description()
    assert isinstance(model, str)
    assert isinstance(flags, list) and flags == sorted(flags)
    assert all(provenance.KERNEL_FLAGS.match(flag) for flag in flags)
    assert not provenance.KERNEL_FLAGS.match("sse4_2") and provenance.KERNEL_FLAGS.match("avx512f")


def test_write_results_writes_the_table_and_its_provenance(provenance, tmp_path, capsys):
    info = provenance.provenance()
    columns = ["setting", "peer s/step", "r1zero s/step", "ratio"]
    rows = [["builtin, beta 0.04", "1.50 (1.40-1.60)", "0.75 (0.70-0.80)", "**2.00x**"]]
    data = {"runs": {"builtin": [1.4, 1.6]}}
    written = provenance.write_results(str(tmp_path / "out"), "demo", info, columns, rows, data, notes="A note.")
    stem = f"{info['date'][:10]}-demo-{info['commit']}"
    assert written == tmp_path / "out" / f"{stem}.md"
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [f"{stem}.json", f"{stem}.md"]  # no .partial
    record = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
    assert set(record) == {"benchmark", "provenance", "columns", "rows", "data", "notes"}
    assert record["benchmark"] == "demo" and record["columns"] == columns and record["rows"] == rows
    assert record["data"] == data and record["notes"] == "A note."
    assert {"date", "commit", "dirty", "python", "versions", "cpu", "cpu_flags", "cores", "torch_threads",
            "command"} <= set(record["provenance"])
    assert record["provenance"]["commit"] == info["commit"]
    text = written.read_text()
    assert text.startswith("# demo\n") and f"commit {info['commit']}" in text
    assert "| setting | peer s/step | r1zero s/step | ratio |" in text
    assert "| builtin, beta 0.04 | 1.50 (1.40-1.60) | 0.75 (0.70-0.80) | **2.00x** |" in text
    assert "A note." in text
    assert "results: " in capsys.readouterr().out
    assert provenance.write_results("none", "demo", info, columns, rows, data) is None
    assert provenance.write_results(None, "demo", info, columns, rows, data) is None


def test_ratio_cell_and_mean_range(provenance):
    # medians 2.5 over 1.5 = 1.67; repeat by repeat 2/1 = 2.00 and 3/2 = 1.50
    assert provenance.ratio_cell([2.0, 3.0], [1.0, 2.0]) == "1.67x (1.50-2.00)"
    assert provenance.ratio_cell([3.0], [2.0], bold=True) == "**1.50x**"  # one pair: no range
    # a run out of memory (None) and a zero peer are left out: each side's median of the values it has, 2.5 over
    # 1.5 = 1.67; only one complete pair (4 / 2), so no range
    assert provenance.ratio_cell([None, 4.0, 1.0], [1.0, 2.0, 0.0]) == "1.67x"
    assert provenance.ratio_cell([None], [1.0]) == "-" and provenance.ratio_cell([1.0], []) == "-"
    # mean 0.65, range 0.6-0.7
    assert provenance.mean_range([0.6, 0.65, 0.7]) == "0.650 (0.600-0.700)"
    assert provenance.mean_range([0.7041], 2) == "0.70"


def test_the_gpu_check_runs_on_a_cpu_at_toy_sizes(tmp_path):
    # benchmarks/gpu_check.py is run on a GPU only when one is lent; at toy sizes on the CPU every part must run,
    # every comparison pass, and the results file hold the numbers its table shows
    import subprocess

    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--repeats", "1", "--output", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every part ran and every comparison passed" in done.stdout
    (results,) = tmp_path.glob("*-gpu_check-*.json")
    data = json.loads(results.read_text())["data"]
    assert not any("error" in data[part] for part in ("equivalence", "default", "step", "engine"))
    checks = data["equivalence"]
    assert len(checks) == 6 and all(c["passed"] and c["difference"] <= c["tolerance"] for c in checks)
    run = data["default"]["device"]
    assert run["steps"] == 2 and 0 <= run["first"]["eval/pass@1"] <= 1 and 0 <= run["last"]["eval/pass@1"] <= 1
    (ours,) = data["step"]["runs"]["r1zero"]  # --repeats 1
    assert len(ours["seconds"]) == 1 and ours["peak_rss_mb"] > 0 and data["step"]["estimate_gb"] > 0
    has_trl = importlib.util.find_spec("trl") is not None
    assert data["step"]["trl"] == has_trl
    rows = json.loads(results.read_text())["rows"]
    assert any("TRL not installed" in row for row in rows) == (not has_trl)
    assert any(row[1] == "seconds per step (peer: TRL)" for row in rows) == has_trl
    assert len(data["engine"]["tokens"]) == 1 and data["engine"]["tokens"][0] > 0
