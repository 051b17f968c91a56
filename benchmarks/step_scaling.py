"""How a GRPO step's time grows with the generation budget and the group size, r1zero and TRL side by side.

    pip install trl==1.16.0                       # for the benchmark only
    python benchmarks/step_scaling.py             # about 10 minutes on 2 cores
    python benchmarks/step_scaling.py --steps 3   # quicker, noisier
    python benchmarks/step_scaling.py --repeats 2 # every cell twice, the sides alternated: about 20 minutes

The ~4M-parameter random Qwen2 of step_vs_trl.py (both sides stop a sample at EOS or </answer>, which it samples
about once in 36 tokens, so most samples end before a long budget and tokens per second is the figure), 8 prompts
a step, beta 0, mu 1, temperature 1; max new tokens 64, 128, 256 with 8 samples per prompt, and 4, 8,
16 samples per prompt with 64 new tokens. Each cell: each side in its own process (step_vs_trl.measure), 2
warm-up steps then --steps timed ones, --repeats times, the sides alternated (TRL r1zero r1zero TRL ...); each
figure is the median of the repeats' median steps, with their range in brackets when --repeats > 1, and the ratio
is r1zero's tokens per second of the step over TRL's (median over median, with the range of the
repeat-by-repeat ratios). Prints the header, a row per cell as it finishes, and the table; with --output (default
benchmarks/results/) writes it with the provenance to <date>-step_scaling-<commit>.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from step_vs_trl import Shape, make_qwen2, measure  # noqa: E402
from provenance import (add_output_argument, alternate, markdown_table, print_header, ratio_cell, show,  # noqa: E402
                        spread, write_results)

SHAPES = [Shape(8, 64), Shape(8, 128), Shape(8, 256), Shape(4, 64), Shape(16, 64)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps (default 5)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="processes per side and cell, sides alternated (TRL r1zero r1zero TRL ...; default 1)")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    info = print_header()
    columns = ["samples per prompt", "max new tokens", "TRL s/step", "r1zero s/step", "tokens/step (TRL / r1zero)",
               "TRL tok/s", "r1zero tok/s", "tok/s ratio (r1zero / TRL)"]
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as folder:
        model = str(make_qwen2(Path(folder) / "qwen2-4m"))
        for shape in sorted(SHAPES, key=lambda s: (s.group != 8, s.group, s.new_tokens)):
            results = {"trl": [], "r1zero": []}
            for _, side in alternate(["trl", "r1zero"], args.repeats):
                results[side].append(measure(side, model, 0.0, args.steps, shape))
            raw[f"{shape.group} x {shape.new_tokens}"] = results
            seconds, tokens, rate = {}, {}, {}
            for side, runs in results.items():
                each_seconds = [statistics.median(run["seconds"]) for run in runs]
                each_tokens = [statistics.median(run["tokens"]) for run in runs]
                seconds[side], tokens[side] = spread(each_seconds), spread(each_tokens)
                rate[side] = [t / s for t, s in zip(each_tokens, each_seconds)]
            rows.append([shape.group, shape.new_tokens, show(seconds["trl"]), show(seconds["r1zero"]),
                         f"{tokens['trl']['median']:.0f} / {tokens['r1zero']['median']:.0f}",
                         show(spread(rate["trl"]), 0), show(spread(rate["r1zero"]), 0),
                         ratio_cell(rate["r1zero"], rate["trl"], bold=True)])
            print(f"  {shape.group} samples x {shape.new_tokens} tokens: TRL {rows[-1][2]} s, r1zero {rows[-1][3]} s, "
                  f"{rows[-1][7]}", flush=True)
    print()
    print(markdown_table(columns, rows))
    write_results(args.output, "step_scaling", info, columns, rows, {"steps": args.steps, "runs": raw},
                  notes=f"8 prompts a step, beta 0; medians over {args.repeats} process(es) a side (each of "
                        f"--steps {args.steps} timed steps), the sides alternated; ranges in brackets.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
