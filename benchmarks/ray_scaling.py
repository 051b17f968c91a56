"""Ray on this machine: step throughput with 0, 1 and 2 rollout workers (and 2 learner ranks), and the time the
new weights take to reach the workers each step, by model size.

    pip install -e ".[ray]"
    python benchmarks/ray_scaling.py              # about 5 minutes on 2 cores
    python benchmarks/ray_scaling.py --steps 4    # quicker, noisier

Part 1 trains the built-in model on the built-in task (the default recipe: 16 prompts x 8 samples) for --steps
steps in each layout, on a private Ray instance of this machine's cores, and reports the median seconds per step
after the first (which includes starting the actors) and tokens per second; the in-process run (0 workers, 1
rank) is the peer every ratio is measured against, in the same run. Part 2 builds random Qwen2 models of about 1M,
4M and 30M parameters and times RolloutWorkers.publish (one object-store put, then every worker loads the
weights), the per-step cost of moving weights, with 1 and 2 workers.
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

LAYOUTS = [(0, 1), (1, 1), (2, 1), (2, 2)]  # (rollout workers, learner ranks)
SIZES = [(128, 4), (256, 4), (512, 8)]  # (hidden, layers): about 1M, 4M and 30M parameters


def step_throughput(workers: int, ranks: int, steps: int, folder: Path) -> tuple[float, float, float]:
    """(median s/step, median tokens/s, median weight sync s) of a built-in run in this layout."""
    from r1zero.config import TrainConfig
    from r1zero.trainer import train

    cpus = (os.cpu_count() or 2) / max(1, workers + (ranks if ranks > 1 else 0))
    config = TrainConfig(output_dir=str(folder / f"w{workers}-r{ranks}"), max_steps=steps, eval_every=0,
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
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps per layout (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="publishes timed per model size (default 5)")
    args = parser.parse_args(argv)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as folder:
        print(f"## Step throughput, built-in model and task, {os.cpu_count()} cores\n")
        print("| rollout workers | learner ranks | s/step | tokens/s | vs in-process | weight sync s/step |")
        print("| --- | --- | --- | --- | --- | --- |")
        baseline = None
        for workers, ranks in LAYOUTS:
            seconds, rate, sync = step_throughput(workers, ranks, args.steps, Path(folder))
            baseline = baseline or rate
            print(f"| {workers} | {ranks} | {seconds:.2f} | {rate:.0f} | {rate / baseline:.2f}x | {sync:.3f} |",
                  flush=True)
        print("\n## Moving the weights each step (one object-store put, every worker loads them)\n")
        print("| parameters | float32 MB | 1 worker s | 2 workers s | MB/s (2 workers) |")
        print("| --- | --- | --- | --- | --- |")
        for hidden, layers in SIZES:
            model_dir = make_qwen2(Path(folder) / f"qwen2-{hidden}-{layers}", hidden, layers)
            count, one = publish_seconds(model_dir, 1, args.repeats)
            _, two = publish_seconds(model_dir, 2, args.repeats)
            megabytes = count * 4 / 1e6
            print(f"| {count / 1e6:.1f}M | {megabytes:.0f} | {one:.3f} | {two:.3f} | {megabytes / two:.0f} |",
                  flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"\n({time.time() - started:.0f} s)")
    sys.exit(code)
