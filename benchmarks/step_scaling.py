"""How a GRPO step's time grows with the generation budget and the group size, r1zero and TRL side by side.

    pip install trl==1.16.0                       # for the benchmark only
    python benchmarks/step_scaling.py             # about 10 minutes on 2 cores
    python benchmarks/step_scaling.py --steps 3   # quicker, noisier

The ~4M-parameter random Qwen2 of step_vs_trl.py (both sides stop a sample at EOS or </answer>, which it samples
about once in 36 tokens, so most samples end before a long budget and tokens per second is the figure), 8 prompts
a step, beta 0, mu 1, temperature 1; max new tokens 64, 128, 256 with 8 samples per prompt, and 4, 8,
16 samples per prompt with 64 new tokens. Each cell: the median seconds per step over --steps steps after 2
warm-up steps, each side in its own process (step_vs_trl.measure), and tokens per second of the step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from step_vs_trl import Shape, make_qwen2, measure

SHAPES = [Shape(8, 64), Shape(8, 128), Shape(8, 256), Shape(4, 64), Shape(16, 64)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps (default 5)")
    args = parser.parse_args(argv)
    print("| samples per prompt | max new tokens | TRL s/step | r1zero s/step | tokens/step (TRL / r1zero) | TRL tok/s "
          "| r1zero tok/s | tok/s ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        model = str(make_qwen2(Path(folder) / "qwen2-4m"))
        for shape in sorted(SHAPES, key=lambda s: (s.group != 8, s.group, s.new_tokens)):
            cells = {}
            for side in ("trl", "r1zero"):
                result = measure(side, model, 0.0, args.steps, shape)
                seconds = statistics.median(result["seconds"])
                cells[side] = (seconds, statistics.median(result["tokens"]))
            (trl_s, trl_tokens), (our_s, our_tokens) = cells["trl"], cells["r1zero"]
            trl_rate, our_rate = trl_tokens / trl_s, our_tokens / our_s
            print(f"| {shape.group} | {shape.new_tokens} | {trl_s:.2f} | {our_s:.2f} | {trl_tokens:.0f} / "
                  f"{our_tokens:.0f} | {trl_rate:.0f} | {our_rate:.0f} | **{our_rate / trl_rate:.2f}x** |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
