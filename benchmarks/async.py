"""Synchronous training against asynchronous (max_staleness 1 and 2) on one rollout worker and the learner, each on
one core: steps per second, held-out pass@1 after the same number of steps, time to a held-out accuracy, and the
share of time each side waited.

    python benchmarks/async.py                              # three workloads, all sides; builtin with 3 seeds
    python benchmarks/async.py --workloads builtin --seeds 0   # a quick look
    python benchmarks/async.py --workloads builtin --correction clip   # coupled PPO on the asynchronous sides

Every side runs on one Ray rollout worker (ray_worker_cpus 1, one torch thread) while the training process trains
with one thread (threads 1): the synchronous side ("k0") is the same machine split with nothing overlapped, so the
ratio is what overlapping buys. Workloads:
  builtin  the default run (the built-in model and task, 120 steps), 3 seeds: pass@1 and speed
  30m      a random-weight Llama of 30M parameters (the built-in tokenizer), completions up to 256 tokens (a random
           model seldom stops, so nearly all of them), 4 x 4 samples: generation and update take comparable time
  code     the built-in model on the built-in code task: every completion goes through the sandbox (its answers
           fail fast, but each runs), so scoring sits in the loop
Sides alternate within a seed (k0 k1 k2, then k2 k1 k0). Steps per second are training steps over their summed
step seconds (evaluations excluded), and each side's ratio is to k0 of the same seed. Learner idle: the share of
a step it waited for its batch (synchronous: the generation-and-scoring phase); generator idle: the share of the
time the worker was not generating (synchronous: the rest of the step; asynchronous: async/generator_idle_fraction).
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

BUILTIN = Path(__file__).resolve().parent.parent / "src" / "r1zero" / "assets" / "base-model"
TARGET_PASS_AT_1 = 0.5  # "time to accuracy": training seconds until the first held-out evaluation at or above this


def random_30m_model(folder: Path) -> Path:
    """A Llama of about 30M parameters with random weights and the built-in model's tokenizer, saved to folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import torch

    tokenizer = AutoTokenizer.from_pretrained(BUILTIN)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def workload_settings(workload: str, folder: Path, steps: int | None) -> dict:
    if workload == "builtin":
        return {"eval_every": 20, **({"max_steps": steps} if steps else {})}
    if workload == "30m":
        model = folder / "model-30m"
        if not model.exists():
            random_30m_model(model)
        return {"model": str(model), "max_steps": steps or 8, "prompts_per_step": 4, "group_size": 4,
                "max_new_tokens": 256, "eval_problems": 4, "eval_samples": 1, "eval_every": 0,
                "eval_out_of_distribution": False}
    if workload == "code":
        return {"task": "code", "max_steps": steps or 20, "eval_problems": 16, "eval_samples": 1, "eval_every": 0}
    raise ValueError(f"unknown workload {workload!r}; valid: builtin, 30m, code")


def run(workload: str, staleness: int, correction: str, seed: int, steps: int | None, folder: Path) -> dict:
    settings = workload_settings(workload, folder, steps)
    config = TrainConfig(**{**settings, "seed": seed, "report_to": ["none"], "checkpoint_every": 0, "threads": 1,
                            "rollout_workers": 1, "ray_worker_cpus": 1.0, "max_staleness": staleness,
                            "rollout_correction": correction if staleness else "none",
                            "output_dir": str(folder / f"{workload}-k{staleness}-{seed}")})
    records = [json.loads(line) for line in (train(config) / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if "eval/pass@1" in r]
    step_seconds = [r["time/step_seconds"] for r in trained]
    elapsed = {r["step"]: sum(step_seconds[:i + 1]) for i, r in enumerate(trained)}
    reached = [elapsed[r["step"]] for r in evals if r["step"] and r["eval/pass@1"] >= TARGET_PASS_AT_1]
    if staleness:
        learner_idle = [r["async/learner_idle_fraction"] for r in trained]
        generator_idle = [r["async/generator_idle_fraction"] for r in trained]
    else:  # the learner waits through generation and scoring; the worker idles through the rest
        learner_idle = [r["time/generation_seconds"] / r["time/step_seconds"] for r in trained]
        generator_idle = [1 - share for share in learner_idle]
    later = trained[len(trained) // 4:]  # the pipeline's start-up (its first k steps) left out of the phase times
    return {
        "workload": workload, "max_staleness": staleness, "correction": correction if staleness else "none",
        "seed": seed, "steps": len(trained),
        "steps_per_second": len(trained) / sum(step_seconds),
        "pass@1_start": evals[0]["eval/pass@1"], "pass@1": evals[-1]["eval/pass@1"],
        "pass@1_curve": [(r["step"], r["eval/pass@1"]) for r in evals],
        "seconds_to_target": reached[0] if reached else None,
        "learner_idle": statistics.mean(learner_idle), "generator_idle": statistics.mean(generator_idle),
        "staleness_mean": statistics.mean(r.get("async/staleness_mean", 0.0) for r in trained),
        "ess_min": min(r.get("async/ess", 1.0) for r in trained),
        "corrected_fraction": statistics.mean(r.get("rollout/corrected_fraction", 0.0) for r in trained),
        "phase_seconds": {phase: statistics.median(r[f"time/{phase}_seconds"] for r in later)
                          for phase in ("generation", "logprobs", "update", "weight_sync")},
    }


COLUMNS = ["workload", "side", "steps/s", "ratio to k0", f"pass@1 end", f"s to pass@1 {TARGET_PASS_AT_1}",
           "learner idle", "generator idle", "staleness", "min ESS"]


def table_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        for staleness in sorted({r["max_staleness"] for r in results if r["workload"] == workload}):
            runs = [r for r in results if (r["workload"], r["max_staleness"]) == (workload, staleness)]
            ratios = []
            for r in runs:
                base = [b for b in results if (b["workload"], b["max_staleness"], b["seed"]) == (workload, 0, r["seed"])]
                if base:
                    ratios.append(r["steps_per_second"] / base[0]["steps_per_second"])
            reached = [r["seconds_to_target"] for r in runs if r["seconds_to_target"] is not None]
            correction = runs[0]["correction"]
            rows.append([workload, f"k{staleness}" + (f" {correction}" if staleness else ""), mean_range([r["steps_per_second"] for r in runs], 2),
                         mean_range(ratios, 2) if ratios else "-",
                         mean_range([r["pass@1"] for r in runs], 3) if workload == "builtin" else "-",
                         (mean_range(reached, 0) + (f" ({len(reached)}/{len(runs)} seeds)" if len(reached) < len(runs)
                                                    else "")) if reached else "-",
                         mean_range([r["learner_idle"] for r in runs], 2),
                         mean_range([r["generator_idle"] for r in runs], 2),
                         mean_range([r["staleness_mean"] for r in runs], 2),
                         mean_range([r["ess_min"] for r in runs], 3)])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["builtin", "30m", "code"], choices=["builtin", "30m", "code"])
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--correction", default="tis", choices=["tis", "mis", "clip"],
                        help="rollout_correction of the asynchronous sides (results named async_<it> unless tis)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the builtin workload")
    parser.add_argument("--other-seeds", type=int, nargs="+", default=[0], help="seeds of the 30m and code workloads")
    parser.add_argument("--steps", type=int, default=0, help="training steps per run (0: each workload's)")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    info = print_header()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for workload in args.workloads:
            seeds = args.seeds if workload == "builtin" else args.other_seeds
            for index, seed in enumerate(seeds):
                order = args.staleness if index % 2 == 0 else list(reversed(args.staleness))
                for staleness in order:
                    results.append(run(workload, staleness, args.correction, seed, args.steps or None,
                                       Path(folder)))
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    rows = table_rows(results)
    heading = (f"one rollout worker and the learner, one core each; rollout_correction {args.correction} when "
               f"asynchronous; builtin seeds {args.seeds}, others {args.other_seeds}")
    print(f"\n{heading}\n")
    print(markdown_table(COLUMNS, rows))
    name = "async" if args.correction == "tis" else f"async_{args.correction}"
    write_results(args.output, name, info, COLUMNS, rows, results,
                  notes=heading + ". Means over seeds, ranges in brackets; phase seconds and curves in the JSON.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
