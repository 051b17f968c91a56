"""r1zero's GRPO step against TRL's GRPOTrainer step, in one run, on the same models, prompts and settings.

    pip install trl==1.16.0                       # for the benchmark only; r1zero does not depend on it
    python benchmarks/step_vs_trl.py              # about 20 minutes on 2 cores
    python benchmarks/step_vs_trl.py --steps 5 --repeats 1 --models builtin    # a quick look

Settings of every row: 8 prompts x 8 samples a step, at most 64 new tokens, temperature 1.0, one optimisation
pass per batch (mu = 1), beta 0.04 (a reference model loaded) or 0; the built-in task's prompts in the R1-Zero
template and its accuracy and format rewards on both sides. Models: the shipped base model (0.87M parameters)
and a randomly initialised ~4M-parameter Qwen2 (hidden 256, 4 layers, 4 heads). Both sides stop a sample at the
same tokens: EOS or `</answer>` (one token in the built-in tokenizer; TRL and `generate` are given it as a second
EOS id), so they generate the same number of tokens in expectation (the random model samples one of the two
about once in 36 tokens); the token counts are reported beside the times.

r1zero packs its update's rows by length (microbatch_tokens 4096, opt-in: same gradient; with 64 rows of at
most 64 tokens it makes one micro-batch, and the length buckets of models.shared_prompt_forward do the rest).
Each side runs in its own process (so peak RSS is its own), 2 warm-up steps then --steps timed ones, --repeats
times, the sides alternated (TRL r1zero r1zero TRL ...); each figure is the median of the repeats' medians, with
their range. The ratio is r1zero's tokens generated per second of a full step (generation + scoring + update)
over TRL's: the fair figure when the sides stop at different tokens. A third row per model times the rollout alone: r1zero's engine
against transformers' `generate` on the same batch.

How close to the hardware: the machine's fp32 matmul throughput is measured (large square matrices), and each
step's model FLOPs (2N per generated or reference-scored token, 6N per trained token, N = parameters) are
reported as a fraction of it, split into generation and update.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).parent))
from provenance import (add_output_argument, alternate, markdown_table, print_header, ratio_cell, show,  # noqa: E402
                        spread, write_results)

PROMPTS, GROUP, NEW_TOKENS, LEARNING_RATE = 8, 8, 64, 1e-6
MICROBATCH_TOKENS = 4096  # r1zero packs rows by length for its update (opt-in: see TrainConfig.microbatch_tokens)


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The machine's fp32 matmul throughput in GFLOP/s (best of `repeats`, torch's default threads)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def make_qwen2(folder: Path, hidden: int = 256, layers: int = 4) -> Path:
    """A random Qwen2 with the built-in tokenizer: by default ~4M parameters (hidden 256, 4 layers, 4 heads),
    about 16 * hidden^2 per layer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1zero.models import load_tokenizer
    from r1zero.models import SHIPPED_MODEL

    tokenizer = load_tokenizer(SHIPPED_MODEL)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def stop_ids(tokenizer) -> list[int]:
    """The token ids that end a sample on every side: EOS and r1zero's stop string (one token here)."""
    from r1zero.templates import STOP_STRING

    stop = tokenizer.encode(STOP_STRING, add_special_tokens=False)
    assert len(stop) == 1, f"{STOP_STRING} is {len(stop)} tokens in this tokenizer; the benchmark needs one"
    return [tokenizer.eos_token_id, stop[0]]


def prompts_text(count: int = PROMPTS) -> list:
    from r1zero.tasks import sums
    from r1zero.templates import build_prompt

    return [(build_prompt(e.prompt), e) for e in sums.held_out(count)]


class Shape(NamedTuple):
    """What a row measures: samples per prompt, the generation budget and prompts per step."""

    group: int = GROUP
    new_tokens: int = NEW_TOKENS
    prompts: int = PROMPTS


class Setup(NamedTuple):
    """Where and how both sides run (this script's rows use the defaults; benchmarks/gpu_check.py does not): the
    device, the precision (a models.PRECISIONS name: "bfloat16" is float32 weights with bfloat16 products, TRL's
    bf16=True), activation checkpointing on both sides, r1zero's update packing, and the untimed first steps."""

    device: str = "cpu"
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    microbatch_tokens: int = MICROBATCH_TOKENS
    warmup: int = 2


def wait_for(device: str) -> None:
    """Let a GPU finish its queued work, so that a clock read next counts it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------------
# The sides, each run in a child process: python step_vs_trl.py --worker SIDE MODEL BETA STEPS


def run_r1zero(model: str, beta: float, steps: int, shape: Shape, setup: Setup = Setup()) -> dict:
    from r1zero.config import TrainConfig
    from r1zero.trainer import train

    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(model=model, output_dir=str(Path(folder) / "run"), max_steps=steps + setup.warmup,
                             prompts_per_step=shape.prompts, group_size=shape.group, max_new_tokens=shape.new_tokens,
                             temperature=1.0,
                             kl_coef=beta, learning_rate=LEARNING_RATE, warmup_steps=0, eval_every=0,
                             microbatch_tokens=setup.microbatch_tokens, device=setup.device, dtype=setup.dtype,
                             gradient_checkpointing=setup.gradient_checkpointing,
                             eval_problems=1, eval_samples=1, eval_out_of_distribution=False, checkpoint_every=0,
                             report_to=["none"])
        records = [json.loads(line) for line in (train(config) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "reward/mean" in r][setup.warmup:]
    return {
        "seconds": [r["time/step_seconds"] for r in timed],
        "generation_seconds": [r["time/generation_seconds"] for r in timed],
        "logprobs_seconds": [r["time/logprobs_seconds"] for r in timed],
        "update_seconds": [r["time/update_seconds"] for r in timed],
        "tokens": [r["response/length_mean"] * shape.prompts * shape.group for r in timed],
    }


def run_trl(model: str, beta: float, steps: int, shape: Shape, setup: Setup = Setup()) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1zero.models import load_tokenizer, resolve_model_path
    from r1zero.rewards import format_reward, integer_reward

    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path)
    pairs = prompts_text(shape.prompts)
    examples = {text: example for text, example in pairs}
    dataset = Dataset.from_list([{"prompt": text} for text, _ in pairs] * (steps + setup.warmup))

    def accuracy(prompts, completions, **kwargs):
        return [float(integer_reward(c, examples[p])) for p, c in zip(prompts, completions)]

    def formatted(prompts, completions, **kwargs):
        return [float(format_reward(c, examples[p])) for p, c in zip(prompts, completions)]

    timings = {"seconds": [], "generation_seconds": [], "tokens": []}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            wait_for(setup.device)
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            wait_for(setup.device)
            timings["seconds"].append(time.perf_counter() - self.started)

    with tempfile.TemporaryDirectory() as folder:
        args = GRPOConfig(output_dir=folder, per_device_train_batch_size=shape.prompts * shape.group,
                          num_generations=shape.group, max_completion_length=shape.new_tokens, temperature=1.0,
                          top_k=0, top_p=1.0, beta=beta,
                          num_iterations=1, steps_per_generation=1, learning_rate=LEARNING_RATE,
                          max_steps=steps + setup.warmup, logging_steps=1, report_to="none",
                          use_cpu=setup.device == "cpu", bf16=setup.dtype == "bfloat16",
                          gradient_checkpointing=setup.gradient_checkpointing, save_strategy="no",
                          shuffle_dataset=False, warmup_steps=0, lr_scheduler_type="constant",
                          reward_weights=[1.0, 0.5], disable_tqdm=True)
        model = AutoModelForCausalLM.from_pretrained(path)
        model.generation_config.eos_token_id = stop_ids(tokenizer)  # TRL stops (and masks) at these ids
        trainer = GRPOTrainer(model=model, reward_funcs=[accuracy, formatted],
                              args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimer()])
        generate = trainer._generate_and_score_completions

        def timed_generate(*a, **k):
            wait_for(setup.device)
            started = time.perf_counter()
            output = generate(*a, **k)
            wait_for(setup.device)
            timings["generation_seconds"].append(time.perf_counter() - started)
            timings["tokens"].append(float(output["completion_mask"].sum()))
            return output

        trainer._generate_and_score_completions = timed_generate
        trainer.train()
    return {key: values[setup.warmup:] for key, values in timings.items()}


def run_rollout(model: str, beta: float, steps: int, shape: Shape, setup: Setup = Setup()) -> dict:
    """The rollout alone: r1zero's engine and transformers' generate, the same batch and precision, alternating."""
    from r1zero.models import PRECISIONS, autocast, load_model, load_tokenizer, resolve_model_path
    from r1zero.rollout.transformers_engine import TransformersEngine
    from r1zero.templates import STOP_STRING

    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path)
    device, precision = torch.device(setup.device), PRECISIONS[setup.dtype]
    policy = load_model(path, precision.parameters, device, trainable=False)
    engine = TransformersEngine(policy, tokenizer, STOP_STRING)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text, _ in prompts_text(shape.prompts)]
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts for _ in range(shape.group)])
    mask = torch.arange(width) >= torch.tensor([width - len(p) for p in prompts for _ in range(shape.group)])[:, None]
    ids, mask = ids.to(device), mask.long().to(device)
    result = {"seconds": [], "tokens": [], "hf_seconds": [], "hf_tokens": []}
    stops = stop_ids(tokenizer)
    generator = torch.Generator(device=device).manual_seed(0)
    for index in range(steps + setup.warmup):
        with autocast(policy, precision.compute):
            wait_for(setup.device)
            started = time.perf_counter()
            generation = engine.generate(prompts, shape.group, shape.new_tokens, 1.0, generator)
            ours = time.perf_counter() - started
            wait_for(setup.device)
            started = time.perf_counter()
            with torch.no_grad():
                output = policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                         top_k=0, top_p=1.0, max_new_tokens=shape.new_tokens,
                                         pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
            wait_for(setup.device)
            theirs = time.perf_counter() - started
        if index >= setup.warmup:
            generated = output[:, width:].cpu()  # (N, T) padded after each sample's stop token
            ended = torch.isin(generated, torch.tensor(stops))
            before = ended.int().cumsum(dim=1) - ended.int()  # stop tokens strictly before each position
            result["seconds"].append(ours)
            result["tokens"].append(float(sum(len(c) for c in generation.completions)))
            result["hf_seconds"].append(theirs)
            result["hf_tokens"].append(float((before == 0).sum()))  # up to the first stop token, included
    return result


SIDES = {"r1zero": run_r1zero, "trl": run_trl, "rollout": run_rollout}


def worker(side: str, model: str, beta: float, steps: int, shape: Shape, setup: Setup = Setup()) -> None:
    """Run one side and print its result as a RESULT line: timings, peak RSS, on a GPU the peak of
    torch.cuda.max_memory_allocated, and the model's parameter count."""
    torch.manual_seed(0)
    result = SIDES[side](model, beta, steps, shape, setup)
    result["peak_rss_mb"] = peak_rss_mb()
    if setup.device.startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    from r1zero.models import resolve_model_path
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(resolve_model_path(model))
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        result["parameters"] = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    print("RESULT " + json.dumps(result))


def measure(side: str, model: str, beta: float, steps: int, shape: Shape = Shape(),
            setup: Setup = Setup()) -> dict:
    """Run one side in a child process and return its timings."""
    command = [sys.executable, __file__, "--worker", json.dumps([side, model, beta, steps, shape, setup])]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{side} on {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# ---------------------------------------------------------------------------------------------------------------
# The table


def summary(result: dict, peak: float, beta: float) -> dict:
    """Median seconds, tokens/s, and model FLOP/s of the step as a fraction of the matmul peak (gen / update)."""
    n = result["parameters"]
    seconds = statistics.median(result["seconds"])
    tokens = statistics.median(result["tokens"])
    generation = statistics.median(result["generation_seconds"])
    generation_flops = 2 * n * tokens * (2 if beta else 1)  # sampling, plus reference scoring when beta > 0
    update_flops = 6 * n * tokens
    return {
        "seconds": seconds, "tokens_per_second": tokens / seconds, "tokens": tokens, "rss": result["peak_rss_mb"],
        "peak_fraction": (generation_flops + update_flops) / seconds / (peak * 1e9),
        "generation_fraction": 2 * n * tokens / generation / (peak * 1e9),
        "update_fraction": (update_flops + generation_flops - 2 * n * tokens) / max(seconds - generation, 1e-9)
                           / (peak * 1e9),
    }


def merged(each: list[dict]) -> dict:
    """One side's figures over its repeats (each repeat's `summary`): the spread of each figure."""
    return {key: spread(s[key] for s in each) for key in each[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps after 2 warm-up steps (default 10)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="processes per side and row, sides alternated (TRL r1zero r1zero TRL ...; default 2)")
    parser.add_argument("--models", nargs="+", default=["builtin", "qwen2-4m"], choices=["builtin", "qwen2-4m"])
    parser.add_argument("--betas", nargs="+", type=float, default=[0.04, 0.0])
    add_output_argument(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON: [side, model, beta, steps, shape, setup]
    args = parser.parse_args(argv)
    if args.worker:
        side, model, beta, steps, shape, setup = json.loads(args.worker)
        worker(side, model, beta, steps, Shape(*shape), Setup(*setup))
        return 0

    info = print_header()
    peak = matmul_gflops()
    print(f"fp32 matmul peak on this machine: {peak:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    columns = ["setting", "peer s/step", "r1zero s/step", "tokens/step (peer / r1zero)", "peer tok/s",
               "r1zero tok/s", "tok/s ratio (r1zero / peer)", "r1zero % of matmul peak (gen / update)",
               "peer % (gen / update)", "peak RSS MB (peer / r1zero)"]
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as folder:
        paths = {"builtin": "builtin", "qwen2-4m": str(make_qwen2(Path(folder) / "qwen2-4m"))}
        for name in args.models:
            for beta in args.betas:
                results = {"trl": [], "r1zero": []}
                for _, side in alternate(["trl", "r1zero"], args.repeats):
                    results[side].append(measure(side, paths[name], beta, args.steps))
                raw[f"{name} beta={beta}"] = results
                each = {side: [summary(result, peak, beta) for result in runs] for side, runs in results.items()}
                ours, theirs = merged(each["r1zero"]), merged(each["trl"])
                rates = {side: [s["tokens_per_second"] for s in each[side]] for side in each}
                rows.append([f"{name}, beta {beta} (peer: TRL)", show(theirs["seconds"]), show(ours["seconds"]),
                             f"{theirs['tokens']['median']:.0f} / {ours['tokens']['median']:.0f}",
                             show(theirs["tokens_per_second"], 0), show(ours["tokens_per_second"], 0),
                             ratio_cell(rates["r1zero"], rates["trl"], bold=True),
                             f"{100 * ours['peak_fraction']['median']:.0f}% "
                             f"({100 * ours['generation_fraction']['median']:.0f} / "
                             f"{100 * ours['update_fraction']['median']:.0f})",
                             f"{100 * theirs['peak_fraction']['median']:.0f}% "
                             f"({100 * theirs['generation_fraction']['median']:.0f} / "
                             f"{100 * theirs['update_fraction']['median']:.0f})",
                             f"{theirs['rss']['median']:.0f} / {ours['rss']['median']:.0f}"])
                print(f"  {rows[-1][0]}: TRL {rows[-1][1]} s, r1zero {rows[-1][2]} s, {rows[-1][6]}", flush=True)
            rollout = measure("rollout", paths[name], 0.0, args.steps)  # alternates within its process
            raw[f"{name} rollout"] = rollout
            hf = spread(t / s for t, s in zip(rollout["hf_tokens"], rollout["hf_seconds"]))
            mine = spread(t / s for t, s in zip(rollout["tokens"], rollout["seconds"]))
            rows.append([f"{name}, rollout only (peer: transformers generate)", show(spread(rollout["hf_seconds"])),
                         show(spread(rollout["seconds"])),
                         f"{statistics.median(rollout['hf_tokens']):.0f} / {statistics.median(rollout['tokens']):.0f}",
                         show(hf, 0), show(mine, 0), f"**{mine['median'] / hf['median']:.2f}x**", "", "", ""])
    print()
    print(markdown_table(columns, rows))
    write_results(args.output, "step_vs_trl", info, columns, rows, {"matmul_gflops": peak, "runs": raw},
                  notes="Medians over the repeats (each a process of --steps timed steps); ranges in brackets.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
