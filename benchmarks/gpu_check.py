"""r1zero on a GPU in one command: numeric equivalences on CUDA, the default run learning there, a training step
of a 0.5B model against TRL's (seconds, phases, peak memory, the memory model), and the rollout engines.

    bash benchmarks/gpu_check.sh                          # on the GPU machine: the carried wheels, then all parts
    python benchmarks/gpu_check.py                        # on any CUDA machine with r1zero (and TRL) installed
    python benchmarks/gpu_check.py --device cpu --tiny    # the same code at toy sizes on a CPU (a test runs it)

The parts, in this order (--parts picks some):

equivalence: a random Qwen2 of Qwen2.5-0.5B's shape (--tiny: hidden 32, 2 layers; both with the real
151,936-token vocabulary, so log-probabilities are chunked as in training), in float32 and in bfloat16 (float32
weights, bfloat16 products: models.PRECISIONS). (a) Log-probabilities through the output head 256 tokens at a
time against the whole logits: the largest difference of a log-probability, and of a gradient relative to the
largest gradient. (b) One whole update step (update.update_policy, SGD with learning rate 1) with activation
checkpointing against the plain one: the largest difference between the two steps, relative to the largest
change a step makes. Beside each, the plain path run twice: the device's own run-to-run noise (GPU kernels such as
attention's backward add in no fixed order). A comparison passes within TOLERANCES.

default: `r1zero train --device DEVICE`, nothing else (the built-in model and task, 120 steps; --tiny: 2 steps,
8 held-out problems): held-out pass@1 and greedy accuracy before and after, seconds per step and the run's wall
time; then the same command on this machine's CPU for --cpu-steps steps (evaluating 8 problems only), for the
seconds-per-step ratio.

engine: r1zero's rollout engine against transformers' `generate` on the 0.5B shape, the same 64 rows, stops and
precision (float32 weights, bfloat16 products), a warm-up round and then --rounds timed ones, alternated within
one process: tokens per second.

step: the 0.5B shape, --dtype bfloat16 --gradient-checkpointing, 8 prompts x 8 samples x up to 256 new tokens,
beta 0.04, 3 steps (--tiny: 2 x 2 x 8, 2 steps), the first one untimed: r1zero's seconds per step with its
phases, the peak of torch.cuda.max_memory_allocated, and r1zero's memory estimate (preflight.step_memory_estimate,
what `train --check` prints, less its allowance for the interpreter, which lives in host memory). TRL's
GRPOTrainer (benchmarks/step_vs_trl.py's harness) on the same model and settings: bf16=True,
gradient_checkpointing=True, generation by transformers; skipped, and said so, when TRL is not installed. Each
side runs in its own process, --repeats times, alternated (r1zero TRL TRL r1zero); medians, with ranges.

Each part runs whatever happened to the others: an error is recorded with its traceback and the next part runs.
The results (<date>-gpu_check-<commit>.json and .md) are written after every part, to --output (default: the
folder in $R1ZERO_RESULTS, else benchmarks/results/), so a run stopped at a time limit keeps the parts it
finished. Exits 0 when every part ran and every comparison passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from memory import make_model  # noqa: E402
from provenance import RESULTS_DIR, markdown_table, print_header, ratio_cell, show, spread, write_results  # noqa: E402
from step_vs_trl import Setup, Shape, measure  # noqa: E402

PARTS = ("equivalence", "default", "engine", "step")  # the longest, and the one with the peer, last
TINY_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, tie_word_embeddings=True)
# The largest difference allowed, per precision: (log-probability in nats, gradient relative to the largest
# gradient, step relative to the largest change of a weight). float32: summation order alone (chunks change which
# products a kernel adds first); bfloat16: products rounded to 8 bits of mantissa, the chunked and whole paths
# rounding different intermediate tensors.
TOLERANCES = {"float32": (1e-4, 1e-3, 1e-3), "bfloat16": (5e-2, 5e-2, 5e-2)}
CHUNK_TOKENS = 256
BETA = 0.04


class Sizes:
    """What each part runs: the issue's sizes on a GPU, toy sizes with --tiny."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.shape = Shape(group=2, new_tokens=8, prompts=2) if tiny else Shape(group=8, new_tokens=256, prompts=8)
        self.step_steps = 1 if tiny else 2  # timed, after one untimed
        self.equivalence_rows = (2, 2, 6, 8) if tiny else (4, 2, 32, 128)  # prompts, group, prompt and completion
        self.default_flags = ["--max-steps", "2", "--eval-every", "1", "--eval-problems", "8", "--eval-samples",
                              "2"] if tiny else []


# ---------------------------------------------------------------------------------------------------------------
# equivalence


def difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest |a - b| over lists of tensors of the same shapes."""
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


def largest(tensors: list[torch.Tensor]) -> float:
    return max(float(t.float().abs().max()) for t in tensors)


def equivalence_batch(model_dir: Path, sizes: Sizes, device: torch.device):
    """A rollout of random prompts and completions of uneven lengths (so padding and chunk edges both occur),
    with advantages of both signs."""
    from r1zero.update import pack_rollout

    prompts_count, group, prompt_tokens, completion_tokens = sizes.equivalence_rows
    generator = torch.Generator().manual_seed(0)
    vocabulary = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompts = [torch.randint(3, vocabulary, (prompt_tokens - i % 3,), generator=generator).tolist()
               for i in range(prompts_count)]  # (P,), (P-1,), ...
    completions = [torch.randint(3, vocabulary, (completion_tokens - (i * 5) % (completion_tokens // 2),),
                                 generator=generator).tolist() for i in range(prompts_count * group)]  # T down to T/2
    advantages = torch.randn(prompts_count * group, generator=generator)  # (N,)
    return pack_rollout(prompts, completions, group, 0, advantages, device)


def logprob_pass(model, batch, chunk_tokens: int, compute) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The completion log-probabilities (0 on padding) and the gradient of sum(advantage * log-probability)."""
    from r1zero.models import autocast

    model.zero_grad(set_to_none=True)
    with autocast(model, compute):
        logprobs, _ = batch.logprobs(model, chunk_tokens=chunk_tokens)  # (N, T)
    logprobs = logprobs * batch.completion_mask
    (logprobs * batch.advantages[:, None]).sum().backward()
    return logprobs.detach(), [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def step_change(model_dir: Path, batch, dtype: str, device: torch.device, checkpointing: bool) -> list[torch.Tensor]:
    """Each weight's change after one SGD step (learning rate 1) of r1zero's update on `batch`."""
    from r1zero.config import TrainConfig
    from r1zero.models import PRECISIONS, enable_checkpointing, load_model
    from r1zero.update import UpdateSettings, update_plan, update_policy

    model = enable_checkpointing(load_model(model_dir, PRECISIONS[dtype].parameters, device), checkpointing)
    assert model.is_gradient_checkpointing == checkpointing, "activation checkpointing did not turn on"
    prompts = int(batch.group_index.max()) + 1
    config = TrainConfig(prompts_per_step=prompts, group_size=len(batch.group_index) // prompts,
                         max_new_tokens=batch.completion_ids.shape[1], max_grad_norm=0.0, dtype=dtype,
                         logprob_chunk_tokens=CHUNK_TOKENS)
    settings = UpdateSettings.from_config(config)
    before = [p.detach().clone() for p in model.parameters()]
    plan = update_plan(batch.lengths(), settings, torch.Generator().manual_seed(0), device)
    update_policy(model, torch.optim.SGD(model.parameters(), lr=1.0), batch, plan, settings)
    change = [p.detach() - b for p, b in zip(model.parameters(), before)]
    del model, before
    return change


def check(name: str, dtype: str, measured: float, noise: float, tolerance: float) -> dict:
    return {"check": name, "dtype": dtype, "difference": measured, "noise": noise, "tolerance": tolerance,
            "passed": measured <= tolerance}


def part_equivalence(model_dir: Path, sizes: Sizes, device: torch.device) -> list[dict]:
    from r1zero.models import PRECISIONS, load_model

    batch = equivalence_batch(model_dir, sizes, device)
    results = []
    for dtype in ("float32", "bfloat16"):
        logprob_tolerance, gradient_tolerance, step_tolerance = TOLERANCES[dtype]
        precision = PRECISIONS[dtype]
        model = load_model(model_dir, precision.parameters, device)
        whole, whole_gradient = logprob_pass(model, batch, 0, precision.compute)
        again, again_gradient = logprob_pass(model, batch, 0, precision.compute)
        chunked, chunked_gradient = logprob_pass(model, batch, CHUNK_TOKENS, precision.compute)
        scale = largest(whole_gradient)
        results.append(check("chunked log-probabilities = whole logits (nats)", dtype,
                             difference([chunked], [whole]), difference([again], [whole]), logprob_tolerance))
        results.append(check("chunked gradient = whole-logits gradient (relative)", dtype,
                             difference(chunked_gradient, whole_gradient) / scale,
                             difference(again_gradient, whole_gradient) / scale, gradient_tolerance))
        del model, whole_gradient, again_gradient, chunked_gradient
        plain = step_change(model_dir, batch, dtype, device, checkpointing=False)
        plain_again = step_change(model_dir, batch, dtype, device, checkpointing=False)
        checkpointed = step_change(model_dir, batch, dtype, device, checkpointing=True)
        scale = largest(plain)
        results.append(check("checkpointed step = plain step (relative)", dtype,
                             difference(checkpointed, plain) / scale, difference(plain_again, plain) / scale,
                             step_tolerance))
        del plain, plain_again, checkpointed
    return results


def equivalence_rows(results: list[dict]) -> list[list]:
    return [[f"equivalence, {r['dtype']}", r["check"], f"{r['difference']:.2e}", f"{r['noise']:.2e} (plain twice)",
             "", ("passed" if r["passed"] else "FAILED") + f" (tolerance {r['tolerance']:.0e})"] for r in results]


# ---------------------------------------------------------------------------------------------------------------
# default


def train_command(device: str, output_dir: Path, flags: list[str]) -> dict:
    """`r1zero train --device DEVICE --output-dir DIR FLAGS` as a user runs it; its evaluations, steps and wall
    time from the run's metrics.jsonl."""
    command = [sys.executable, "-m", "r1zero.cli", "train", "--device", device, "--output-dir", str(output_dir),
               *flags]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[1:])} exited {done.returncode}:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval/pass@1" in r]
    steps = [r["time/step_seconds"] for r in records if "time/step_seconds" in r]
    return {"seconds": seconds, "step_seconds": steps, "first": evaluations[0], "last": evaluations[-1],
            "steps": len(steps)}


def part_default(device: str, sizes: Sizes, workdir: Path, cpu_steps: int) -> dict:
    on_device = train_command(device, workdir / f"default-{device.replace(':', '-')}", sizes.default_flags)
    result = {"device": on_device}
    if device != "cpu":
        result["cpu"] = train_command("cpu", workdir / "default-cpu",
                                      ["--max-steps", str(cpu_steps), "--eval-every", "0", "--eval-problems", "8",
                                       "--eval-samples", "1"])
    return result


def per_step(run: dict) -> float:
    """Median seconds per step after the first (which warms kernels up), or the only step's."""
    return statistics.median(run["step_seconds"][1:] or run["step_seconds"])


def default_rows(result: dict, device: str) -> list[list]:
    run = result["device"]
    first, last = run["first"], run["last"]
    rows = [[f"default, {device}", f"held-out pass@1, step 0 -> {run['steps']}",
             f"{first['eval/pass@1']:.3f} -> {last['eval/pass@1']:.3f}", "", "",
             f"{100 * (last['eval/pass@1'] - first['eval/pass@1']):+.1f} points"],
            [f"default, {device}", f"greedy accuracy, step 0 -> {run['steps']}",
             f"{first['eval/accuracy_greedy']:.3f} -> {last['eval/accuracy_greedy']:.3f}", "", "", ""],
            [f"default, {device}", "wall time of the run (s)", f"{run['seconds']:.0f}", "", "",
             "evaluations included"]]
    if "cpu" in result:
        ours, theirs = per_step(run), per_step(result["cpu"])
        rows.append([f"default, {device}", "seconds per step (peer: this machine's CPU)", f"{ours:.3f}",
                     f"{theirs:.3f}", f"{ours / theirs:.2f}x", "below 1: faster on the GPU"])
    return rows


# ---------------------------------------------------------------------------------------------------------------
# step


def trl_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None and importlib.util.find_spec("datasets") is not None


def memory_estimate_gb(model_dir: Path, sizes: Sizes, device: str) -> float:
    """r1zero's estimate of the step (preflight's); on a GPU less its allowance for the interpreter, which lives in
    host memory."""
    from r1zero.config import TrainConfig
    from r1zero.memory import GB
    from r1zero.preflight import step_memory_estimate

    shape = sizes.shape
    config = TrainConfig(prompts_per_step=shape.prompts, group_size=shape.group, max_new_tokens=shape.new_tokens,
                         dtype="bfloat16", gradient_checkpointing=True, kl_coef=BETA)
    estimate = step_memory_estimate(config, model_dir, prompt_tokens=70)  # the R1-Zero template around a sum
    return (estimate.total - (estimate.baseline if device != "cpu" else 0)) / GB


def part_step(model_dir: Path, sizes: Sizes, device: str, repeats: int) -> dict:
    setup = Setup(device=device, dtype="bfloat16", gradient_checkpointing=True, microbatch_tokens=0, warmup=1)
    sides = ["r1zero", "trl"] if trl_installed() else ["r1zero"]
    runs, errors = {side: [] for side in sides}, {}
    for index in range(repeats):
        for side in sides if index % 2 == 0 else sides[::-1]:
            try:  # one side failing keeps the other's numbers
                runs[side].append(measure(side, str(model_dir), BETA, sizes.step_steps, sizes.shape, setup))
            except RuntimeError as error:
                errors.setdefault(side, []).append(str(error)[-3000:])
                print(f"  step: {side} failed: {str(error)[-1000:]}", file=sys.stderr, flush=True)
                continue
            print(f"  step: {side} done ({statistics.median(runs[side][-1]['seconds']):.2f} s/step)", flush=True)
    if not runs["r1zero"]:
        raise RuntimeError(f"every r1zero run of the step failed: {errors['r1zero'][-1]}")
    return {"runs": runs, "errors": errors, "estimate_gb": memory_estimate_gb(model_dir, sizes, device),
            "trl": bool(runs.get("trl"))}


def peak_gb(result: dict) -> float:
    """The side's peak: device memory on a GPU, the process's peak RSS on a CPU."""
    return (result["peak_cuda_mb"] if "peak_cuda_mb" in result else result["peak_rss_mb"]) * 2 ** 20 / 1e9


def step_rows(result: dict, sizes: Sizes, device: str) -> list[list]:
    shape = sizes.shape
    label = f"step, {device}, {shape.prompts}x{shape.group}x{shape.new_tokens}"
    memory = "peak torch.cuda.max_memory_allocated (GB)" if device != "cpu" else "peak RSS (GB)"
    ours = result["runs"]["r1zero"]
    theirs = result["runs"].get("trl", [])
    seconds = [statistics.median(r["seconds"]) for r in ours]
    peaks = [peak_gb(r) for r in ours]
    rows = []
    if theirs:
        their_seconds = [statistics.median(r["seconds"]) for r in theirs]
        their_peaks = [peak_gb(r) for r in theirs]
        rows.append([label, "seconds per step (peer: TRL)", show(spread(seconds)), show(spread(their_seconds)),
                     ratio_cell(seconds, their_seconds, bold=True), "below 1: r1zero faster"])
        rows.append([label, memory + " (peer: TRL)", show(spread(peaks)), show(spread(their_peaks)),
                     ratio_cell(peaks, their_peaks, bold=True), "below 1: r1zero smaller"])
        rows.append([label, "TRL's generation + scoring (s)",
                     "", show(spread(statistics.median(r["generation_seconds"]) for r in theirs)), "", ""])
    else:
        why = "TRL failed (see the results file)" if result["errors"].get("trl") else "TRL not installed"
        rows.append([label, "seconds per step", show(spread(seconds)), why, "", ""])
        rows.append([label, memory, show(spread(peaks)), why, "", ""])
    for phase in ("generation", "logprobs", "update"):
        rows.append([label, f"r1zero {phase} (s)", show(spread(statistics.median(r[f"{phase}_seconds"])
                                                               for r in ours)), "", "", ""])
    rows.append([label, "r1zero's memory estimate (GB)", f"{result['estimate_gb']:.2f}", "", "",
                 f"measured peak / estimate: {statistics.median(peaks) / result['estimate_gb']:.2f}"])
    return rows


# ---------------------------------------------------------------------------------------------------------------
# engine


def part_engine(model_dir: Path, sizes: Sizes, device: str, rounds: int) -> dict:
    setup = Setup(device=device, dtype="bfloat16", warmup=1)
    return measure("rollout", str(model_dir), 0.0, rounds, sizes.shape, setup)


def engine_rows(result: dict, sizes: Sizes, device: str) -> list[list]:
    ours = [t / s for t, s in zip(result["tokens"], result["seconds"])]
    theirs = [t / s for t, s in zip(result["hf_tokens"], result["hf_seconds"])]
    return [[f"engine, {device}, {sizes.shape.prompts}x{sizes.shape.group}x{sizes.shape.new_tokens}",
             "rollout tokens per second (peer: transformers generate)", show(spread(ours), 0), show(spread(theirs), 0),
             ratio_cell(ours, theirs, bold=True), "above 1: r1zero's engine faster"]]


# ---------------------------------------------------------------------------------------------------------------
# The run


COLUMNS = ["part", "measure", "r1zero", "peer", "ratio (r1zero / peer)", "verdict or note"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: the whole script in about a minute on a CPU")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts (default: all)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="processes per side in the step part, alternated (default 2: r1zero TRL TRL r1zero)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the engine part (default 3)")
    parser.add_argument("--cpu-steps", type=int, default=10,
                        help="steps of the default run on the CPU, for the seconds-per-step ratio (default 10)")
    parser.add_argument("--workdir", help="where the models and runs go (default: a temporary folder)")
    parser.add_argument("--output", default=os.environ.get("R1ZERO_RESULTS") or str(RESULTS_DIR),
                        help="folder for the results files, or 'none' (default: $R1ZERO_RESULTS, else "
                             "benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device; "
                     "use --device cpu (with --tiny) on a machine without one")

    info = print_header()
    if args.device.startswith("cuda"):
        info["cuda"] = torch.version.cuda
        print(f"# CUDA {torch.version.cuda}, {torch.cuda.get_device_name(args.device)}, "
              f"{torch.cuda.get_device_properties(args.device).total_memory / 2**30:.0f} GiB")
    sizes = Sizes(args.tiny)
    data: dict = {"tiny": args.tiny, "device": args.device, "tolerances": TOLERANCES}
    rows: list[list] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(args.workdir or temporary)
        model_dir = None
        for part in args.parts:
            started = time.perf_counter()
            print(f"{part}: starting", flush=True)
            try:
                if model_dir is None and part in ("equivalence", "step", "engine"):
                    model_dir = make_model(workdir / ("qwen2-tiny" if args.tiny else "qwen2-0.5b"),
                                           TINY_SHAPE if args.tiny else "0.5b")
                if part == "equivalence":
                    result = part_equivalence(model_dir, sizes, torch.device(args.device))
                    rows += equivalence_rows(result)
                    failed += [f"{r['check']} ({r['dtype']})" for r in result if not r["passed"]]
                elif part == "default":
                    result = part_default(args.device, sizes, workdir, 1 if args.tiny else args.cpu_steps)
                    rows += default_rows(result, args.device)
                elif part == "step":
                    result = part_step(model_dir, sizes, args.device, args.repeats)
                    rows += step_rows(result, sizes, args.device)
                else:
                    result = part_engine(model_dir, sizes, args.device, 1 if args.tiny else args.rounds)
                    rows += engine_rows(result, sizes, args.device)
                data[part] = result
            except Exception as error:  # noqa: BLE001 - the next part runs; the error goes in the results
                data[part] = {"error": traceback.format_exc()}
                rows.append([part, "did not finish", "", "", "", f"ERROR: {type(error).__name__}: "
                             f"{str(error).splitlines()[0][:200] if str(error) else ''}"])
                failed.append(part)
                print(data[part]["error"], file=sys.stderr, flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # what this process cached goes back to the GPU, for the next part's processes
            data.setdefault("seconds", {})[part] = time.perf_counter() - started
            print(f"{part}: {data['seconds'][part]:.0f} s", flush=True)
            write_results(args.output, "gpu_check", info, COLUMNS, rows, data,
                          notes=notes(args, data, failed))
    print()
    print(markdown_table(COLUMNS, rows))
    print(("FAILED: " + "; ".join(failed)) if failed else "every part ran and every comparison passed")
    return 1 if failed else 0


def notes(args, data: dict, failed: list[str]) -> str:
    done = ", ".join(f"{part} {seconds:.0f} s" for part, seconds in data.get("seconds", {}).items())
    return (f"Parts run: {done}. " + (f"Failed: {'; '.join(failed)}. " if failed else "") +
            "Tolerances (log-probability nats, gradient and step relative): " +
            "; ".join(f"{dtype} {' / '.join(f'{t:.0e}' for t in values)}" for dtype, values in TOLERANCES.items()) +
            ". Step and engine figures: medians over the repeats (rounds), ranges in brackets.")


if __name__ == "__main__":
    sys.exit(main())
