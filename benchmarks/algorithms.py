"""REINFORCE, RLOO, GRPO, Dr. GRPO, DAPO, GSPO, CISPO and PPO on the built-in task: same seed, same steps.

    python benchmarks/algorithms.py                          # 120 steps each, seed 0 (about 15 minutes)
    python benchmarks/algorithms.py --steps 60 --seeds 0 1 2

Every algorithm starts from the shipped base model with the default run's settings (16 prompts x 8 samples,
lr 2e-4, beta 0, 48 new tokens) and changes only what its paper recommends, listed in ALGORITHMS. Each trains
for the same number of steps (128 samples a step for every algorithm), so a row's score does not depend on the
machine's load; the seconds it took are reported beside it. Then each is evaluated on the same 200 held-out
problems (4 samples at T = 1, and greedy). One table comes out: held-out pass@1 and greedy accuracy at the end,
seconds per step and in all, and the final mean response length; with several seeds, the mean and the range.
The table and every run's numbers go to benchmarks/results/ (see --output).

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

sys.path.insert(0, str(Path(__file__).parent))
from provenance import add_output_argument, markdown_table, mean_range, print_header, write_results  # noqa: E402

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
    # so that the four steps move the policy per rollout about as far as the default's one
    "gspo": {"policy_loss": "gspo", "clip_low": 3e-4, "clip_high": 4e-4, "minibatch_size": 32, "learning_rate": 5e-5},
    # MiniMax-M1 2025: the clipped ratio as a detached weight on REINFORCE (no lower bound, upper 0.28), token-level
    # loss; four minibatches at a quarter of the lr as for GSPO (CISPO has no trust region, so four steps at the
    # full lr move the policy too far; at one step per rollout its gradient is GRPO's)
    "cispo": {"policy_loss": "cispo", "clip_low": 1.0, "clip_high": 0.28, "loss_aggregation": "token",
              "minibatch_size": 32, "learning_rate": 5e-5},
    # Schulman et al. 2017 as TinyZero runs it: a critic, GAE(1, 1), one sample per prompt, the same 128 samples a
    # step; critic lr 5x the actor's (TinyZero: 10x at 1e-6, scaled to this tiny model's lr)
    "ppo": {"advantage": "gae", "prompts_per_step": 128, "group_size": 1, "critic_learning_rate": 1e-3},
}


def run(name: str, seed: int, steps: int, folder: Path) -> dict:
    config = TrainConfig(**ALGORITHMS[name], seed=seed, max_steps=steps, eval_every=0,
                         eval_out_of_distribution=False,  # the held-out split only, as before it existed
                         checkpoint_every=0, report_to=["none"], output_dir=str(folder / f"{name}-{seed}"))
    records = [json.loads(line) for line in (train(config) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if "eval/pass@1" in r]
    return {
        "algorithm": name, "seed": seed, "steps": len(steps),
        "seconds_per_step": statistics.median(r["time/step_seconds"] for r in steps),
        "training_seconds": sum(r["time/step_seconds"] for r in steps),
        "pass@1_start": evals[0]["eval/pass@1"], "pass@1": evals[-1]["eval/pass@1"],
        "greedy": evals[-1]["eval/accuracy_greedy"], "format": evals[-1]["eval/format"],
        "response_length": evals[-1]["eval/response_length"],
    }


COLUMNS = ["algorithm", "held-out pass@1", "greedy", "steps", "s/step", "training s", "response length"]


def table_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for name in dict.fromkeys(r["algorithm"] for r in results):
        runs = [r for r in results if r["algorithm"] == name]
        column = lambda key, digits: mean_range([r[key] for r in runs], digits)  # noqa: E731
        rows.append([name, column("pass@1", 3), column("greedy", 3), column("steps", 0),
                     column("seconds_per_step", 2), column("training_seconds", 0), column("response_length", 1)])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="training steps per run (default 120, the default "
                                                               "run's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    add_output_argument(parser)
    args = parser.parse_args(argv)
    info = print_header()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for name in args.algorithms:
                results.append(run(name, seed, args.steps, Path(folder)))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    start = mean_range([r["pass@1_start"] for r in results], 3)
    heading = f"{args.steps} steps each, seeds {args.seeds}; held-out pass@1 before training {start}"
    print(f"\n{heading}\n")
    rows = table_rows(results)
    print(markdown_table(COLUMNS, rows))
    write_results(args.output, "algorithms", info, COLUMNS, rows, results,
                  notes=heading + ". With several seeds: the mean, and the range in brackets.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
