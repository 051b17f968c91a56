"""Rollout engines on this machine: r1zero's own engine, vLLM and transformers' `generate`, by model size; a whole
training step with each of the two rollout engines; and the seconds vLLM takes to load new weights each step.

    # in the vLLM environment (docs/vllm.md):
    python benchmarks/rollout_engines.py             # about 15 minutes on 2 cores
    python benchmarks/rollout_engines.py --repeats 1 --steps 6 --sizes 0.9M 4M --output none   # a quick look

Part 1 samples the same batch (8 held-out prompts of the built-in task x 8 samples, at most 64 new tokens,
temperature 1, stopping at EOS or the stop string) with each engine on the built-in model (0.9M parameters) and
random Qwen2 models of about 4M, 30M and 120M parameters with its tokenizer, in one process, on the same cores:
a warm-up round, then --repeats timed rounds, the engines alternated (A B C C B A ...), so drift within the run
lands on every engine alike. Each figure is the median tokens per second over the rounds with their range in
brackets; transformers' `generate` is the peer: r1zero's and vLLM's median over its, with the range of the
round-by-round ratios, and vLLM's over r1zero's beside them. Part 2 trains the built-in model with the default
recipe for --steps steps with --rollout-engine r1zero and then vllm (one run each, in that order) and reports the
median seconds per step after the first. Part 3 times VLLMEngine.load_weights (vLLM's in-place reload, the
prefix-cache reset) per size: the median of --repeats loads after a first. Prints the header, part 1's table
(with part 3's column), the size at which vLLM overtakes r1zero's engine, and part 2's table; with --output
(default benchmarks/results/) writes part 1's table, the rest in its notes, and the provenance to
<date>-rollout_engines-<commit>.json and .md.
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
from provenance import (add_output_argument, alternate, markdown_table, print_header, ratio_cell, show,  # noqa: E402
                        spread, write_results)

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
    """Each engine's tokens/s on one batch in each timed round (the engines alternated, after a warm-up round),
    and vLLM's weight-load seconds after the first."""
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
    for index, name in alternate(list(sides), repeats + 1):  # round 0 warms every engine up and is not counted
        started = time.perf_counter()
        tokens = sides[name]()
        if index:
            speeds[name].append(tokens / (time.perf_counter() - started))
    vllm.close()
    return {**speeds, "parameters": sum(p.numel() for p in policy.parameters()), "load_seconds": loads[1:]}


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
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds per size after one warm-up, the engines alternated (default 3)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per engine in part 2")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "r1zero-rollout-engines"))
    add_output_argument(parser)
    args = parser.parse_args(argv)
    info = print_header()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    setting = (f"rollout of {PROMPTS} prompts x {SAMPLES} samples, <= {NEW_TOKENS} new tokens, temperature 1, "
               f"float32, {torch.get_num_threads()} threads; median of {args.repeats} rounds, the engines "
               "alternated, ranges in brackets")
    print(setting + "\n")
    columns = ["model", "parameters", "generate tokens/s (peer)", "r1zero tokens/s", "vLLM tokens/s",
               "r1zero / generate", "vLLM / generate", "vLLM / r1zero", "vLLM weight load s"]
    rows, raw = [], {}
    crossover = None
    for size in args.sizes:
        speed = raw[size] = engine_speeds(model_folder(size, workdir), args.repeats)
        if statistics.median(speed["vllm"]) > statistics.median(speed["r1zero"]) and crossover is None:
            crossover = size
        rows.append([size, f"{speed['parameters'] / 1e6:.1f}M", show(spread(speed["generate"]), 0),
                     show(spread(speed["r1zero"]), 0), show(spread(speed["vllm"]), 0),
                     ratio_cell(speed["r1zero"], speed["generate"]), ratio_cell(speed["vllm"], speed["generate"]),
                     ratio_cell(speed["vllm"], speed["r1zero"]), show(spread(speed["load_seconds"]), 3)])
        print(f"  {size}: generate {rows[-1][2]}, r1zero {rows[-1][3]}, vLLM {rows[-1][4]} tokens/s", flush=True)
    print()
    print(markdown_table(columns, rows))
    crossing = f"vLLM overtakes r1zero's engine on this CPU at: {crossover or 'none of these sizes'}"
    print(f"\n{crossing}\n")
    step_columns = ["training step (built-in model, default recipe)", "median s/step"]
    seconds = {engine: step_seconds(engine, args.steps, workdir) for engine in ("r1zero", "vllm")}
    step_rows = [[f"--rollout-engine {engine}", f"{value:.3f}"] for engine, value in seconds.items()]
    print(markdown_table(step_columns, step_rows))
    step_ratio = f"vllm / r1zero step time: {seconds['vllm'] / seconds['r1zero']:.2f}"
    print(f"\n{step_ratio}")
    write_results(args.output, "rollout_engines", info, columns, rows,
                  {"engines": raw, "step_seconds": seconds, "steps": args.steps},
                  notes=f"{setting}.\n\n{crossing}\n\nA training step with each engine ({args.steps} steps, "
                        f"the median after the first; one run each, r1zero first):\n\n"
                        f"{markdown_table(step_columns, step_rows)}\n\n{step_ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
