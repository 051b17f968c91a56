"""REINFORCE, RLOO, GRPO, Dr. GRPO, DAPO, GSPO, CISPO and PPO on the built-in task: same seed, same budget.

    python benchmarks/algorithms.py                          # 90 s of training each, seed 0 (about 15 minutes)
    python benchmarks/algorithms.py --seconds 120 --seeds 0 1 2 --output algorithms.json

Every algorithm starts from the shipped base model with the default run's settings (16 prompts x 8 samples,
lr 2e-4, beta 0, 48 new tokens) and changes only what its paper recommends, listed in ALGORITHMS. Each trains
until its budget is spent (`time_budget_seconds`), then is evaluated on the same 200 held-out problems (4
samples at T = 1, and greedy). One table comes out: held-out pass@1 and greedy accuracy at the end, steps done,
seconds per step, and the final mean response length; with several seeds, the mean and the range.

One seed on a tiny task is not a verdict: the table says which algorithm got furthest on this task in this
budget on this machine, nothing more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from r1zero.config import TrainConfig
from r1zero.trainer import train

# What each algorithm changes from the default run, and why.
ALGORITHMS: dict[str, dict] = {
    # Williams 1992, with the batch mean as the baseline
    "reinforce": {"advantage": "reinforce"},
    # Ahmadian et al. 2024: leave-one-out baseline within the group
    "rloo": {"advantage": "rloo"},
    # DeepSeekMath / DeepSeek-R1: group-standardised advantage, per-response mean (the default run)
    "grpo": {},
    # Liu et al. 2025: no std division, sum over tokens / the generation budget
    "dr_grpo": {"advantage": "dr_grpo", "loss_aggregation": "constant"},
    # Yu et al. 2025: token-level loss, clip-higher (0.2 / 0.28), dynamic sampling, soft overlong punishment
    # (buffer 1/5 of the budget, as 4096 of 20480), and several minibatches per rollout so the clip matters
    "dapo": {"loss_aggregation": "token", "clip_high": 0.28, "dynamic_sampling": True, "overlong_buffer": 10,
             "minibatch_size": 64},
    # Zheng et al. 2025: one length-normalised ratio per response, clipped at 3e-4 / 4e-4 per response, each rollout
    # split into four minibatches (GSPO section 5.1) so that the ratio departs from 1; a quarter of the default lr,
    # so that the four steps move the policy per rollout as far as the default's one (at 2e-4: 0.58, see README)
    "gspo": {"policy_loss": "gspo", "clip_low": 3e-4, "clip_high": 4e-4, "minibatch_size": 32, "learning_rate": 5e-5},
    # MiniMax-M1 2025: the clipped ratio as a detached weight on REINFORCE (no lower bound, upper 0.28), token-level
    # loss; four minibatches at a quarter of the lr as for GSPO (CISPO has no trust region: at four steps of 2e-4
    # it collapsed to 0.08; at one step per rollout its gradient is GRPO's)
    "cispo": {"policy_loss": "cispo", "clip_low": 1.0, "clip_high": 0.28, "loss_aggregation": "token",
              "minibatch_size": 32, "learning_rate": 5e-5},
    # Schulman et al. 2017 as TinyZero runs it: a critic, GAE(1, 1), one sample per prompt, the same 128 samples a
    # step; critic lr 5x the actor's (TinyZero: 10x at 1e-6, scaled to this tiny model's lr)
    "ppo": {"advantage": "gae", "prompts_per_step": 128, "group_size": 1, "critic_learning_rate": 1e-3},
}


def run(name: str, seed: int, seconds: float, folder: Path) -> dict:
    config = TrainConfig(**ALGORITHMS[name], seed=seed, max_steps=100_000, time_budget_seconds=seconds, eval_every=0,
                         eval_out_of_distribution=False,  # the held-out split only, as before it existed
                         checkpoint_every=0, report_to=["none"], output_dir=str(folder / f"{name}-{seed}"))
    records = [json.loads(line) for line in (train(config) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if "eval/pass@1" in r]
    return {
        "algorithm": name, "seed": seed, "steps": len(steps),
        "seconds_per_step": statistics.median(r["time/step_seconds"] for r in steps),
        "pass@1_start": evals[0]["eval/pass@1"], "pass@1": evals[-1]["eval/pass@1"],
        "greedy": evals[-1]["eval/accuracy_greedy"], "format": evals[-1]["eval/format"],
        "response_length": evals[-1]["eval/response_length"],
    }


def spread(values: list[float], digits: int) -> str:
    """"0.704" for one value, "0.650 (0.600-0.704)" for several: mean and range."""
    mean = f"{statistics.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(results: list[dict]) -> str:
    lines = ["| algorithm | held-out pass@1 | greedy | steps | s/step | response length |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in dict.fromkeys(r["algorithm"] for r in results):
        rows = [r for r in results if r["algorithm"] == name]
        column = lambda key, digits: spread([r[key] for r in rows], digits)  # noqa: E731
        lines.append(f"| {name} | {column('pass@1', 3)} | {column('greedy', 3)} | {column('steps', 0)} | "
                     f"{column('seconds_per_step', 2)} | {column('response_length', 1)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="training time per run (default 90)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--output", help="also write every run's numbers to this JSON file")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for name in args.algorithms:
                results.append(run(name, seed, args.seconds, Path(folder)))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    start = spread([r["pass@1_start"] for r in results], 3)
    print(f"\n{args.seconds:.0f} s of training each, seeds {args.seeds}; held-out pass@1 before training {start}\n")
    print(table(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
