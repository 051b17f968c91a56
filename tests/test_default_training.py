"""The embedded default, end to end: `r1zero train` with no arguments must visibly learn.

Slow (about 2 minutes on 2 cores): run with `python -m pytest -m slow`. CI runs it.
"""

import json
import subprocess
import sys
import time

import pytest


@pytest.mark.slow
def test_default_training_raises_held_out_pass_at_1_by_30_points(tmp_path):
    started = time.time()
    # The default settings exactly; only the output folder is pinned so the test can read it.
    result = subprocess.run([sys.executable, "-m", "r1zero.cli", "train", "--output-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=1800)
    seconds = time.time() - started
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/pass@1" in r]
    before, after = evals[0], evals[-1]
    print(f"\ndefault run: {seconds:.0f}s; pass@1 {before['eval/pass@1']:.3f} -> {after['eval/pass@1']:.3f}, "
          f"greedy {before['eval/accuracy_greedy']:.3f} -> {after['eval/accuracy_greedy']:.3f}, "
          f"format {before['eval/format']:.3f} -> {after['eval/format']:.3f}")
    assert before["step"] == 0 and after["step"] == max(r["step"] for r in records)
    assert after["eval/pass@1"] >= before["eval/pass@1"] + 0.30
    assert after["eval/format"] >= 0.95
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    # a healthy run does not cry wolf: the entropy that settles at its floor alerts once (hysteresis)
    alerts = [line for line in result.stdout.splitlines() if line.startswith("ALERT")]
    assert len(alerts) <= 1, alerts
    assert 0.0 <= after["eval/ood/pass@1"] <= 1.0 and "eval/ood/accuracy_greedy" in before  # five-number sums
