"""The default run on this machine: several seeds, and one seed twice, to show what repeats and what varies.

    python benchmarks/reproducibility.py                 # seeds 0 1 2, seed 0 again: about 7 minutes on 2 cores
    python benchmarks/reproducibility.py --seeds 0 --steps 40 --output none   # a quick look, nothing written

Each run is `r1zero train` with its defaults (the built-in model and task, 120 steps of 16 x 8, evaluations at
steps 0, 40, 80 and 120) but for the seed, with the loggers off (they change no number). For every evaluation:
held-out pass@1 and greedy accuracy per seed, their mean and range, and the out-of-distribution pass@1. Then the
first seed is run again in a fresh process state and compared: every metrics.jsonl value but the time/ and
throughput/ keys, and every weight of the final model, must be equal to the bit. The header says which CPU
and kernel flags the numbers belong to: other instruction sets take other trajectories (docs/reproducibility.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from provenance import add_output_argument, markdown_table, mean_range, print_header, write_results  # noqa: E402

from r1zero.config import TrainConfig  # noqa: E402
from r1zero.trainer import train  # noqa: E402


def run(seed: int, steps: int, folder: Path) -> tuple[list[dict], dict[str, torch.Tensor], float]:
    """(metrics.jsonl records, final weights, training seconds) of the default run with this seed."""
    config = TrainConfig(seed=seed, max_steps=steps, output_dir=str(folder), report_to=["none"])
    records = [json.loads(line) for line in (train(config) / "metrics.jsonl").read_text().splitlines()]
    weights = {}
    for path in sorted((folder / "final").glob("*.safetensors")):
        weights |= load_file(path)
    seconds = sum(r.get("time/step_seconds", 0.0) + r.get("time/eval_seconds", 0.0) for r in records)
    return records, weights, seconds


def evaluations(records: list[dict]) -> dict[int, dict]:
    return {r["step"]: r for r in records if "eval/pass@1" in r}


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in records]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=TrainConfig().max_steps, help="training steps (default: the "
                                                                                 "default run's)")
    parser.add_argument("--no-repeat", action="store_true", help="skip running the first seed a second time")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    info = print_header()
    runs, seconds = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            records, weights, seconds[seed] = run(seed, args.steps, Path(folder) / f"seed{seed}")
            runs[seed] = (records, weights)
            print(f"seed {seed}: " + ", ".join(f"step {step} pass@1 {r['eval/pass@1']:.3f}"
                                               for step, r in evaluations(records).items()), flush=True)
        repeat = None
        if not args.no_repeat:
            first = args.seeds[0]
            records, weights, _ = run(first, args.steps, Path(folder) / "repeat")
            same_metrics = untimed(records) == untimed(runs[first][0])
            same_weights = weights.keys() == runs[first][1].keys() and all(
                torch.equal(weights[name], runs[first][1][name]) for name in weights)
            repeat = {"seed": first, "same_metrics": same_metrics, "same_weights": same_weights}
            print(f"seed {first} again: metrics {'identical' if same_metrics else 'DIFFER'}, final weights "
                  f"{'identical' if same_weights else 'DIFFER'}")
    steps = sorted(evaluations(runs[args.seeds[0]][0]))
    columns = ["step", *[f"pass@1 seed {s}" for s in args.seeds], "pass@1 mean (range)", "greedy mean (range)",
               "out-of-distribution pass@1 mean (range)"]
    rows = []
    for step in steps:
        evals = [evaluations(runs[seed][0])[step] for seed in args.seeds]
        rows.append([step, *[f"{e['eval/pass@1']:.3f}" for e in evals],
                     mean_range([e["eval/pass@1"] for e in evals]),
                     mean_range([e["eval/accuracy_greedy"] for e in evals]),
                     mean_range([e.get("eval/ood/pass@1", float("nan")) for e in evals])])
    print()
    print(markdown_table(columns, rows))
    notes = (f"{len(args.seeds)} seeds of the default run ({args.steps} steps); training and evaluation seconds per "
             f"run: {', '.join(f'{seconds[s]:.0f}' for s in args.seeds)}.")
    if repeat:
        notes += (f" Seed {repeat['seed']} run twice: metrics (all but time/ and throughput/) "
                  f"{'identical' if repeat['same_metrics'] else 'different'}, final weights "
                  f"{'identical' if repeat['same_weights'] else 'different'}.")
    print(notes)
    data = {"runs": {seed: {"evaluations": list(evaluations(runs[seed][0]).values()), "seconds": seconds[seed]}
                     for seed in args.seeds}, "repeat": repeat}
    write_results(args.output, "reproducibility", info, columns, rows, data, notes=notes)
    return 0 if not repeat or (repeat["same_metrics"] and repeat["same_weights"]) else 1


if __name__ == "__main__":
    sys.exit(main())
