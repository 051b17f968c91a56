"""Ray on this machine: step throughput with 0, 1 and 2 rollout workers (and 2 learner ranks), and the time the
new weights take to reach the workers each step, by model size.

    pip install -e ".[ray]"
    python benchmarks/ray_scaling.py              # about 5 minutes on 2 cores
    python benchmarks/ray_scaling.py --steps 4    # quicker, noisier
    python benchmarks/ray_scaling.py --rounds 3   # every layout 3 times, alternated: part 1 takes 3 times as long
    python benchmarks/ray_scaling.py --output none                   # print only, write no results files

Part 1 trains the built-in model on the built-in task (the default recipe: 16 prompts x 8 samples) for --steps
steps in each layout, on a private Ray instance of this machine's cores, and reports the median seconds per step
after the first (which includes starting the actors), tokens per second and weight-sync seconds per step. The
layouts run --rounds times, alternated (A B C D D C B A ...), so drift within the run lands on every layout alike;
each figure is the median over the rounds with their range in brackets. The in-process run (0 workers, 1 rank) is
the peer every ratio is measured against, in the same run: a layout's median tokens per second over the
in-process one's, with the range of the round-by-round ratios. Part 2 builds random Qwen2 models of about 1M, 4M
and 30M parameters and times RolloutWorkers.publish (one object-store put, then every worker loads the weights),
the per-step cost of moving weights, with 1 and 2 workers: the median of --repeats publishes after a first that
starts the actors. Prints the header, a line per part-1 run, both tables and the elapsed time; with --output
(default benchmarks/results/) writes part 1's table, part 2's in its notes, and the provenance to
<date>-ray_scaling-<commit>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from step_vs_trl import make_qwen2  # noqa: E402
from provenance import (add_output_argument, alternate, markdown_table, print_header, ratio_cell, show,  # noqa: E402
                        spread, write_results)

LAYOUTS = [(0, 1), (1, 1), (2, 1), (2, 2)]  # (rollout workers, learner ranks)
SIZES = [(128, 4), (256, 4), (512, 8)]  # (hidden, layers): about 1M, 4M and 30M parameters


def step_throughput(workers: int, ranks: int, steps: int, folder: Path) -> tuple[float, float, float]:
    """(median s/step, median tokens/s, median weight sync s) of a built-in run in this layout, its run written
    to `folder` (a new one)."""
    from r1zero.config import TrainConfig
    from r1zero.trainer import train

    cpus = (os.cpu_count() or 2) / max(1, workers + (ranks if ranks > 1 else 0))
    config = TrainConfig(output_dir=str(folder), max_steps=steps, eval_every=0,
                         eval_problems=20, checkpoint_every=0, report_to=["none"], rollout_workers=workers,
                         train_processes=ranks, ray_worker_cpus=min(1.0, cpus))
    train(config)
    records = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps_after_first = [r for r in records if "reward/mean" in r][1:]
    return (statistics.median(r["time/step_seconds"] for r in steps_after_first),
            statistics.median(r["throughput/tokens_per_second"] for r in steps_after_first),
            statistics.median(r.get("time/weight_sync_seconds", 0.0) for r in steps_after_first))


def publish_seconds(model_dir: Path, workers: int, repeats: int) -> tuple[int, float]:
    """(parameters, median seconds of one publish to `workers` workers)."""
    from transformers import AutoModelForCausalLM

    from r1zero.config import TrainConfig
    from r1zero.distributed import RolloutWorkers
    from r1zero.models import load_tokenizer

    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    pool = RolloutWorkers(workers, policy, load_tokenizer(model_dir), TrainConfig(ray_worker_cpus=0.5),
                          torch.device("cpu"))
    times = []
    for version in range(repeats + 1):
        pool.publish(version, policy)
        times.append(pool.publish_seconds)
    pool.close()
    return sum(p.numel() for p in policy.parameters()), statistics.median(times[1:])  # the first starts the actors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--steps", type=int, default=8, help="training steps per layout (default 8)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each layout in part 1, the layouts alternated (A B C D D C B A ...; default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="publishes timed per model size (default 5)")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    import ray

    info = print_header()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    layouts = {f"w{workers}-r{ranks}": (workers, ranks) for workers, ranks in LAYOUTS}
    peer = "w0-r1"  # in-process
    runs: dict[str, list[tuple[float, float, float]]] = {label: [] for label in layouts}
    with tempfile.TemporaryDirectory() as folder:
        for round_index, label in alternate(list(layouts), args.rounds):
            workers, ranks = layouts[label]
            runs[label].append(step_throughput(workers, ranks, args.steps, Path(folder) / f"{label}-{round_index}"))
            seconds, rate, sync = runs[label][-1]
            print(f"  {workers} rollout workers, {ranks} learner ranks, round {round_index + 1}: {seconds:.2f} s/step, "
                  f"{rate:.0f} tokens/s, weight sync {sync:.3f} s/step", flush=True)
        columns = ["rollout workers", "learner ranks", "s/step", "tokens/s", "tokens/s vs in-process",
                   "weight sync s/step"]
        rows = []
        peer_rates = [rate for _, rate, _ in runs[peer]]
        for label, (workers, ranks) in layouts.items():
            seconds, rates, syncs = ([run[i] for run in runs[label]] for i in range(3))
            ratio = "(peer)" if label == peer else ratio_cell(rates, peer_rates)
            rows.append([workers, ranks, show(spread(seconds)), show(spread(rates), 0), ratio, show(spread(syncs), 3)])
        title = f"Step throughput, built-in model and task, {os.cpu_count()} cores, {args.rounds} round(s)"
        print(f"\n## {title}\n")
        print(markdown_table(columns, rows))
        print("\n## Moving the weights each step (one object-store put, every worker loads them)\n")
        publish_columns = ["parameters", "float32 MB", "1 worker s", "2 workers s", "MB/s (2 workers)"]
        publish_rows, publishes = [], []
        for hidden, layers in SIZES:
            model_dir = make_qwen2(Path(folder) / f"qwen2-{hidden}-{layers}", hidden, layers)
            count, one = publish_seconds(model_dir, 1, args.repeats)
            _, two = publish_seconds(model_dir, 2, args.repeats)
            megabytes = count * 4 / 1e6
            publishes.append({"hidden": hidden, "layers": layers, "parameters": count, "one_worker_seconds": one,
                              "two_workers_seconds": two})
            publish_rows.append([f"{count / 1e6:.1f}M", f"{megabytes:.0f}", f"{one:.3f}", f"{two:.3f}",
                                 f"{megabytes / two:.0f}"])
            print(f"  {publish_rows[-1][0]} parameters: {one:.3f} s to 1 worker, {two:.3f} s to 2", flush=True)
        print()
        print(markdown_table(publish_columns, publish_rows))
    ray.shutdown()
    write_results(args.output, "ray_scaling", info, columns, rows,
                  {"steps": args.steps, "layouts": {label: [dict(zip(("seconds", "tokens_per_second", "sync_seconds"),
                                                                     run)) for run in values]
                                                    for label, values in runs.items()},
                   "publish": publishes},
                  notes=f"{title}; each run's figures are the medians of its steps after the first, the table's "
                        "the medians over the rounds with their range. The peer is the in-process run (0 workers, "
                        f"1 rank).\n\nMoving the weights each step (one object-store put, every worker loads them; "
                        f"median of {args.repeats} publishes):\n\n{markdown_table(publish_columns, publish_rows)}")
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"\n({time.time() - started:.0f} s)")
    sys.exit(code)
