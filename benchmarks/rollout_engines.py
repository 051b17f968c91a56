"""Rollout engines on this machine: r1zero's own engine, vLLM and transformers' `generate`, by model size; a whole
training step with each of the two rollout engines; and the seconds vLLM takes to load new weights each step.

    # in the vLLM environment (README, "vLLM"):
    python benchmarks/rollout_engines.py             # about 15 minutes on 2 cores
    python benchmarks/rollout_engines.py --repeats 1 --steps 6 --sizes 0.9M 4M

Part 1 samples the same batch (8 held-out prompts of the built-in task x 8 samples, at most 64 new tokens,
temperature 1, stopping at EOS or the stop string) with each engine, alternating, on the built-in model (0.9M
parameters) and random Qwen2 models of about 4M, 30M and 120M parameters with its tokenizer, and reports the
median tokens per second of each, in one process, on the same cores. Part 2 trains the built-in model with the
default recipe for --steps steps with --rollout-engine r1zero and vllm and reports the median seconds per step
after the first. Part 3 times VLLMEngine.load_weights (vLLM's in-place reload, the prefix-cache reset) per size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from step_vs_trl import make_qwen2, stop_ids  # noqa: E402

SIZES = {"0.9M": None, "4M": (256, 4), "30M": (512, 8), "120M": (768, 12)}  # (hidden, layers) of a random Qwen2
PROMPTS, SAMPLES, NEW_TOKENS = 8, 8, 64


def model_folder(size: str, workdir: Path) -> Path:
    from r1zero.models import SHIPPED_MODEL

    if SIZES[size] is None:
        return SHIPPED_MODEL
    hidden, layers = SIZES[size]
    folder = workdir / f"qwen2-{size}"
    return folder if (folder / "config.json").exists() else make_qwen2(folder, hidden, layers)


def engine_speeds(folder: Path, repeats: int) -> dict:
    """Median tokens/s of each engine on one batch, and vLLM's median weight-load seconds."""
    from r1zero.models import load_model, load_tokenizer, plain_state_dict
    from r1zero.rollout.transformers_engine import TransformersEngine
    from r1zero.rollout.vllm_engine import VLLMEngine, VLLMSettings
    from r1zero.tasks import sums
    from r1zero.templates import STOP_STRING, encode_prompts

    tokenizer = load_tokenizer(folder)
    policy = load_model(folder, torch.float32, torch.device("cpu"), trainable=False)
    prompts = encode_prompts([example.prompt for example in sums.held_out(PROMPTS)], "r1_zero", tokenizer)
    seeds = list(range(PROMPTS))
    ours = TransformersEngine(policy, tokenizer, STOP_STRING)
    vllm = VLLMEngine(policy.config, policy.generation_config, tokenizer,
                      VLLMSettings(512, 0.3, 0.0, True, "float32", 0), torch.device("cpu"), STOP_STRING)
    loads = []
    for _ in range(repeats + 1):
        vllm.load_weights(plain_state_dict(policy), 0)
        loads.append(vllm.load_seconds)
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts for _ in range(SAMPLES)])
    mask = (ids != tokenizer.pad_token_id).long()
    stops = torch.tensor(stop_ids(tokenizer))

    def run_generate():
        with torch.no_grad():
            output = policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=stops.tolist())
        ended = torch.isin(output[:, width:], stops).int()
        return int(((ended.cumsum(dim=1) - ended) == 0).sum())  # tokens up to the first stop, included

    sides = {"r1zero": lambda: sum(map(len, ours.generate(prompts, SAMPLES, NEW_TOKENS, 1.0, seeds=seeds).completions)),
             "vllm": lambda: sum(map(len, vllm.generate(prompts, SAMPLES, NEW_TOKENS, 1.0, seeds=seeds).completions)),
             "generate": run_generate}
    speeds = {name: [] for name in sides}
    for index in range(repeats + 1):  # the first round warms every engine up and is not counted
        for name, run in sides.items():
            started = time.perf_counter()
            tokens = run()
            if index:
                speeds[name].append(tokens / (time.perf_counter() - started))
    vllm.close()
    result = {name: statistics.median(values) for name, values in speeds.items()}
    result["parameters"] = sum(p.numel() for p in policy.parameters())
    result["load_seconds"] = statistics.median(loads[1:])
    return result


def step_seconds(engine: str, steps: int, workdir: Path) -> float:
    """Median seconds per training step after the first: the default recipe on the built-in model."""
    from r1zero.config import TrainConfig
    from r1zero.trainer import train

    folder = workdir / f"train-{engine}-{time.time_ns()}"
    train(TrainConfig(output_dir=str(folder), rollout_engine=engine, max_steps=steps, eval_every=0, eval_problems=8,
                      eval_samples=1, checkpoint_every=0, report_to=["none"], eval_out_of_distribution=False))
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["time/step_seconds"] for r in records if "reward/mean" in r and r["step"] > 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per size (after one warm-up)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per engine in part 2")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "r1zero-rollout-engines"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"rollout of {PROMPTS} prompts x {SAMPLES} samples, <= {NEW_TOKENS} new tokens, temperature 1, "
          f"float32, {torch.get_num_threads()} threads; median of {args.repeats} rounds\n")
    print("| model | parameters | r1zero tokens/s | vLLM tokens/s | generate tokens/s | vLLM / r1zero | "
          "vLLM weight load s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    crossover = None
    for size in args.sizes:
        speed = engine_speeds(model_folder(size, workdir), args.repeats)
        ratio = speed["vllm"] / speed["r1zero"]
        if ratio > 1 and crossover is None:
            crossover = size
        print(f"| {size} | {speed['parameters'] / 1e6:.1f}M | {speed['r1zero']:.0f} | {speed['vllm']:.0f} | "
              f"{speed['generate']:.0f} | {ratio:.2f} | {speed['load_seconds']:.3f} |", flush=True)
    print(f"\nvLLM overtakes r1zero's engine on this CPU at: {crossover or 'none of these sizes'}\n")
    print("| training step (built-in model, default recipe) | median s/step |")
    print("| --- | --- |")
    seconds = {engine: step_seconds(engine, args.steps, workdir) for engine in ("r1zero", "vllm")}
    for engine, value in seconds.items():
        print(f"| --rollout-engine {engine} | {value:.3f} |")
    print(f"\nvllm / r1zero step time: {seconds['vllm'] / seconds['r1zero']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
