"""The tool task trained with and without `--tools python`: does RL discover the tool, and what does it cost?

    python benchmarks/tools.py                       # recipes/tools.yaml, 3 seeds, with and without tools
    python benchmarks/tools.py --seeds 0 --steps 20  # a quick look

Both sides are recipes/tools.yaml exactly (the tool base model on pair_sums: two two-digit numbers), the same
steps and seeds; the side without tools sets `tools: none` and nothing else, so its prompt still says that Python
may be run, and when it writes a call, nothing runs: it has to make up the output. Per run: held-out pass@1 (and
greedy) at every evaluation, the share of training completions that called the tool at each step, seconds per
step and the share of it generation spent waiting for the sandbox (tools/seconds over time/step_seconds). One
table (means over seeds, ranges in brackets), and the curves in the results JSON; benchmarks/results/ gets both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from r1zero.config import load_config
from r1zero.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from provenance import add_output_argument, markdown_table, mean_range, print_header, write_results  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tools.yaml"


def run(tools: str, seed: int, steps: int | None, folder: Path) -> dict:
    overrides = {"tools": tools, "seed": seed, "report_to": ["none"], "checkpoint_every": 0,
                 "output_dir": str(folder / f"{tools}-{seed}"), **({"max_steps": steps} if steps else {})}
    records = [json.loads(line) for line in
               (train(load_config(RECIPE, overrides)) / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if "eval/pass@1" in r]
    waited = [r.get("tools/seconds", 0.0) / r["time/step_seconds"] for r in trained]
    return {
        "tools": tools, "seed": seed, "steps": len(trained),
        "pass@1_curve": [(r["step"], r["eval/pass@1"]) for r in evals],
        "greedy_curve": [(r["step"], r["eval/accuracy_greedy"]) for r in evals],
        "calls_curve": [(r["step"], r.get("tools/completions_with_call", 0.0)) for r in trained],
        "pass@1_start": evals[0]["eval/pass@1"], "pass@1": evals[-1]["eval/pass@1"],
        "greedy": evals[-1]["eval/accuracy_greedy"],
        "completions_with_call_last": statistics.mean(r.get("tools/completions_with_call", 0.0) for r in trained[-5:]),
        "seconds_per_step": statistics.median(r["time/step_seconds"] for r in trained),
        "training_seconds": sum(r["time/step_seconds"] for r in trained),
        "sandbox_share": statistics.mean(waited),
    }


COLUMNS = ["side", "pass@1 start", "pass@1 end", "gain (points)", "greedy end", "completions calling (last 5 steps)",
           "s/step", "training s", "sandbox share of a step"]


def table_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for tools in dict.fromkeys(r["tools"] for r in results):
        runs = [r for r in results if r["tools"] == tools]
        column = lambda key, digits: mean_range([r[key] for r in runs], digits)  # noqa: E731
        gains = [100 * (r["pass@1"] - r["pass@1_start"]) for r in runs]
        with_tools = tools != "none"  # without tools nothing runs: a call written is plain text, not counted
        rows.append([f"tools {tools}", column("pass@1_start", 3), column("pass@1", 3), mean_range(gains, 1),
                     column("greedy", 3), column("completions_with_call_last", 2) if with_tools else "-",
                     column("seconds_per_step", 2), column("training_seconds", 0),
                     column("sandbox_share", 2) if with_tools else "-"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=0, help="training steps per run (0: the recipe's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sides", nargs="+", default=["python", "none"], choices=["python", "none"])
    add_output_argument(parser)
    args = parser.parse_args(argv)
    info = print_header()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for tools in args.sides:  # alternated per seed, so a drift of the machine's speed hits both sides
                results.append(run(tools, seed, args.steps or None, Path(folder)))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    ends = {tools: statistics.mean(r["pass@1"] for r in results if r["tools"] == tools) for tools in args.sides}
    heading = (f"recipes/tools.yaml, {results[0]['steps']} steps, seeds {args.seeds}"
               + (f"; with tools {100 * (ends['python'] - ends['none']):+.1f} points of pass@1 over without"
                  if len(ends) == 2 else ""))
    print(f"\n{heading}\n")
    rows = table_rows(results)
    print(markdown_table(COLUMNS, rows))
    write_results(args.output, "tools", info, COLUMNS, rows, results,
                  notes=heading + ". Means over seeds, ranges in brackets; the curves are in the JSON.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
