"""Peak memory and seconds per step of a GRPO step at real model shapes, r1zero's paths against TRL's, one run.

    pip install trl==1.16.0                        # TRL for its row only; r1zero does not depend on it
    python benchmarks/memory.py                    # the 0.5B rows: about 80 minutes on 2 cores
    python benchmarks/memory.py --repeats 2        # every row twice, alternated (A B B A): about 160 minutes
    python benchmarks/memory.py --rows checkpointing fsdp2 --large   # some rows, and the 8 x 8 x 256 one
    python benchmarks/memory.py --shape 1.5b --dtype bfloat16        # on a GPU machine
    python benchmarks/memory.py --rows checkpointing --prompts 2 --new-tokens 8 --output none  # a quick look

The model is a randomly initialised Qwen2 of Qwen2.5-0.5B's shape (hidden 896, MLP 4864, 24 layers, 14 heads, 2
key-value heads, a 151,936-token vocabulary, tied embeddings: 494M parameters) with r1zero's built-in tokenizer
beside it, saved once into --workdir. Every row trains the built-in task for 2 steps of 8 prompts x 4 samples, at
most 128 new tokens, beta 0.04 (a reference model), lr 1e-6, in its own process; the random model rarely stops,
so nearly every sample is 128 tokens. Measured, of the training process and of each Ray learner rank until step
2 has finished: the peak resident memory (RSS: the kernel's own high-water mark, VmHWM, so no spike between two
polls is missed) and the peak of the process's own pages (RssAnon, polled every 0.2 s: its anonymous memory,
without the libraries, the files it maps and Ray's object store, which the driver and the ranks map together and
which RSS counts in each of them); and step 2's seconds (step 1 warms up) with their phases: generation,
reference (r1zero: its logprobs phase, advantages included) and update. Both come from /proc/PID/status, which
walks no page tables and so costs the measured process nothing (a USS reading, psutil's memory_full_info, walks
every page table while holding the lock every mmap and munmap needs, and slows the row it measures). A row is
killed, and reported out of memory, when the machine has less than --reserve GB left. (On a GPU,
torch.cuda.max_memory_allocated is the number to read; not measured here.)

Rows: plain (the whole logits at once: --logprob-chunk-tokens 0), chunked (log-probabilities through the head
256 tokens at a time, the default), checkpointing (chunked + --gradient-checkpointing), fsdp2 (checkpointing +
--train-processes 2 --fsdp: the policy, its gradients, AdamW and the reference split over 2 ranks), trl (TRL
1.16's GRPOTrainer with gradient_checkpointing=True, same model and settings); --large adds r1zero's best
one-process path at 8 prompts x 8 samples x 256 tokens (--steps 1 measures its peak in half the time).

Each row runs --repeats times, the rows alternated (A B C ... C B A ...), so drift within the run lands on every
row alike; each figure is the median over the repeats with their range in brackets. Each r1zero row of the TRL
row's shape is compared with the TRL row of the same run: its peak RSS (of its largest process: the driver, or a
learner rank) over TRL's, and its s/step over TRL's, the median of each over the median of TRL's, with the range
of the repeat-by-repeat ratios. Beside each row, r1zero.memory's estimate of it; then the estimate on paper for
0.5B-32B models on 1, 8 and 64 GPUs of 80 GB with FSDP2. Prints a progress line per run, its raw numbers as JSON
on stderr, the table, and the paper table; with --output (default benchmarks/results/) writes them with the
provenance to <date>-memory-<commit>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from provenance import (add_output_argument, alternate, markdown_table, print_header, ratio_cell, show,  # noqa: E402
                        spread, write_results)

SHAPES = {  # Qwen2.5's published configs (config.json of Qwen/Qwen2.5-*), without their weights
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, tie_word_embeddings=False),
    "32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                num_key_value_heads=8, tie_word_embeddings=False),
}
VOCABULARY = 151936
PROMPTS, GROUP, NEW_TOKENS, BETA = 8, 4, 128, 0.04
CHUNK = "256"  # r1zero's default --logprob-chunk-tokens
ROWS = {
    "plain": ["--logprob-chunk-tokens", "0"],
    "chunked": ["--logprob-chunk-tokens", CHUNK],
    "checkpointing": ["--logprob-chunk-tokens", CHUNK, "--gradient-checkpointing"],
    "fsdp2": ["--logprob-chunk-tokens", CHUNK, "--gradient-checkpointing", "--train-processes", "2", "--fsdp",
              "--ray-worker-cpus", "1"],
    "trl": [],
}
LARGE = ("checkpointing", ROWS["checkpointing"], 8, 8, 256)  # prompts, samples per prompt, new tokens
LARGE_LABEL = "checkpointing 8 x 8 x 256"


def make_model(folder: Path, shape: str | dict) -> Path:
    """A random Qwen2 of the shape (a SHAPES name, or such a dict of dimensions) and the vocabulary of Qwen2.5,
    with r1zero's tokenizer (saved once; reused when already there)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1zero.models import SHIPPED_MODEL, load_tokenizer

    tokenizer = load_tokenizer(SHIPPED_MODEL)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCABULARY, max_position_embeddings=32768, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
                         **(SHAPES[shape] if isinstance(shape, str) else shape))
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Watching a row's processes


def learner_ranks() -> list:
    import psutil

    ranks = []
    for process in psutil.process_iter(["cmdline"]):
        if any("LearnerRank" in part for part in process.info["cmdline"] or []):
            ranks.append(process)
    return ranks


def status_gb(pid: int) -> tuple[float, float]:
    """(VmHWM, RssAnon) of process `pid` in GB, from /proc/PID/status: the kernel's peak RSS so far and the
    process's own (anonymous) resident pages now. Reading it walks no page tables."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "RssAnon"):
                fields[name] = int(value.split()[0]) * 1024 / 1e9  # kB
            elif name == "State" and value.split()[0] in ("Z", "X"):  # ended, not yet reaped: no memory lines
                raise ProcessLookupError(f"process {pid} has ended")
    if len(fields) < 2:
        raise RuntimeError(f"/proc/{pid}/status has no VmHWM or RssAnon line: Linux 4.5 or newer is needed")
    return fields["VmHWM"], fields["RssAnon"]


def watch(command: list[str], done, reserve_gb: float, log: Path, phase=None) -> dict:
    """Run `command` in its own session; poll its memory until done() (or the process ends); kill the session.
    Returns the peak RSS (VmHWM: resident pages, shared ones included) and the peak of its own pages (RssAnon:
    Ray's object store, which the driver and the ranks map together, counts in each one's RSS but in no one's
    own pages) in GB, of the process and of each learner rank, and whether the machine ran short (less than
    reserve_gb available). With `phase` (a function naming the phase the run is in now), also the peak of each
    process's own pages in each phase: {phase: {"driver" or "rank N": GB}}, ranks numbered by start order."""
    import psutil

    peaks: dict[str, list[float]] = {}
    by_phase: dict[str, dict[str, float]] = {}
    rank_numbers: dict[int, int] = {}
    killed = False
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        while process.poll() is None and not done():
            now = phase() if phase else None
            for name, pid in [("driver", process.pid)] + [(f"rank {r.pid}", r.pid) for r in learner_ranks()]:
                try:
                    high_water, own = status_gb(pid)
                except OSError:  # the process has just ended
                    continue
                old = peaks.get(name, [0.0, 0.0])
                peaks[name] = [max(old[0], high_water), max(old[1], own)]
                if now is not None:
                    who = name if name == "driver" else \
                        f"rank {rank_numbers.setdefault(pid, len(rank_numbers))}"
                    by_phase.setdefault(now, {})[who] = max(by_phase.get(now, {}).get(who, 0.0), own)
            if psutil.virtual_memory().available < reserve_gb * 1e9:
                killed = True
                break
            time.sleep(0.2)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for rank in learner_ranks():
            rank.kill()
        process.wait()
    ranks = [value for key, value in sorted(peaks.items()) if key.startswith("rank")]
    driver = peaks.get("driver", [0.0, 0.0])
    return {"driver_rss_gb": driver[0], "driver_own_gb": driver[1], "rank_rss_gb": [r[0] for r in ranks],
            "rank_own_gb": [r[1] for r in ranks], "out_of_memory": killed, "phases_own_gb": by_phase}


PHASES = ("steps", "evaluation", "checkpoint", "final save")


def run_phase(metrics: Path, checkpoint: Path, steps_to_run: int) -> str:
    """Which of PHASES a run that ends with step `steps_to_run` is in, from what it has written: the steps until
    that step's metrics line, then the last evaluation until its line, then the checkpoint until its folder is
    there (renamed from its partial name when whole), then the final model until the process ends."""
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    steps = sum('"reward/mean"' in line for line in lines)
    if steps < steps_to_run:
        return "steps"
    if not any('"eval/' in line and f'"step": {steps_to_run},' in line for line in lines):
        return "evaluation"
    return "final save" if checkpoint.is_dir() else "checkpoint"


def run_r1zero(model: Path, flags: list[str], prompts: int, group: int, new_tokens: int, dtype: str, reserve: float,
               folder: Path, steps_to_run: int, phases: bool = False) -> dict:
    output = folder / "run"
    command = [sys.executable, "-m", "r1zero.cli", "train", "--model", str(model), "--output-dir", str(output),
               "--max-steps", str(steps_to_run), "--prompts-per-step", str(prompts), "--group-size", str(group),
               "--max-new-tokens", str(new_tokens), "--kl-coef", str(BETA), "--learning-rate", "1e-6",
               "--warmup-steps", "0", "--eval-every", "0", "--eval-problems", "1", "--eval-samples", "1",
               "--checkpoint-every", "0", "--report-to", "none", "--no-eval-out-of-distribution", "--dtype", dtype,
               *flags]
    metrics = output / "metrics.jsonl"

    def steps() -> list[dict]:
        if not metrics.exists():
            return []
        return [json.loads(line) for line in metrics.read_text().splitlines() if '"reward/mean"' in line]

    checkpoint = output / "checkpoints" / f"step_{steps_to_run:06d}"
    until = (lambda: False) if phases else (lambda: len(steps()) >= steps_to_run)  # phases: to the end
    result = watch(command, until, reserve, folder / "log.txt",
                   (lambda: run_phase(metrics, checkpoint, steps_to_run)) if phases else None)
    done = steps()
    finished = len(done) >= steps_to_run
    result["seconds"] = done[-1]["time/step_seconds"] if finished else None
    result["tokens"] = done[-1]["response/length_mean"] * prompts * group if finished else None
    result["phases"] = [done[-1][f"time/{phase}_seconds"] for phase in ("generation", "logprobs", "update")] \
        if finished else None
    return result


TRL_WORKER = """
import json, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
sys.path.insert(0, sys.argv[2])
from memory import PROMPTS, GROUP, NEW_TOKENS, BETA
from r1zero.rewards import format_reward, integer_reward
from r1zero.tasks import sums
from r1zero.templates import build_prompt

model_dir, prompts, new_tokens = sys.argv[1], int(sys.argv[3]), int(sys.argv[4])
pairs = [(build_prompt(e.prompt), e) for e in sums.held_out(prompts)]
examples = dict(pairs)
dataset = Dataset.from_list([{"prompt": text} for text, _ in pairs] * 2)
accuracy = lambda prompts, completions, **k: [float(integer_reward(c, examples[p])) for p, c in zip(prompts, completions)]
formatted = lambda prompts, completions, **k: [float(format_reward(c, examples[p])) for p, c in zip(prompts, completions)]

phases = {"generation": 0.0, "scoring": 0.0, "reference": 0.0}  # seconds in the step now running

def timed(function, name, when=lambda: True):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            if when():
                phases[name] += time.perf_counter() - started
    return wrapper

class StepTimer(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        phases.update(dict.fromkeys(phases, 0.0))
        self.started = time.perf_counter()
    def on_step_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self.started
        update = seconds - phases["scoring"]  # the policy's forward and backward, and AdamW
        print(json.dumps({"step_seconds": seconds, "generation_seconds": phases["generation"],
                          "reference_seconds": phases["reference"], "update_seconds": update}), flush=True)

args = GRPOConfig(output_dir=sys.argv[5], per_device_train_batch_size=prompts * GROUP, num_generations=GROUP,
                  max_completion_length=new_tokens, temperature=1.0, top_k=0, top_p=1.0, beta=BETA, num_iterations=1,
                  steps_per_generation=1, learning_rate=1e-6, max_steps=2, logging_steps=1, report_to="none",
                  use_cpu=True, bf16=False, save_strategy="no", shuffle_dataset=False, warmup_steps=0,
                  lr_scheduler_type="constant", reward_weights=[1.0, 0.5], disable_tqdm=True,
                  gradient_checkpointing=True)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
model.generate = timed(model.generate, "generation")  # TRL's generation calls the model's own generate
# generation, rewards and the reference pass; the reference is the one log-probability call without gradients
GRPOTrainer._generate_and_score_completions = timed(GRPOTrainer._generate_and_score_completions, "scoring")
GRPOTrainer._get_per_token_logps_and_entropies = timed(GRPOTrainer._get_per_token_logps_and_entropies, "reference",
                                                       when=lambda: not torch.is_grad_enabled())
GRPOTrainer(model=model, reward_funcs=[accuracy, formatted], args=args, train_dataset=dataset,
            processing_class=tokenizer, callbacks=[StepTimer()]).train()
"""


def run_trl(model: Path, prompts: int, new_tokens: int, reserve: float, folder: Path) -> dict:
    script = folder / "trl_worker.py"
    script.write_text(TRL_WORKER)
    log = folder / "log.txt"
    command = [sys.executable, str(script), str(model), str(Path(__file__).parent), str(prompts), str(new_tokens),
               str(folder / "out")]

    def steps() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()
                if line.startswith('{"step_seconds"')] if log.exists() else []

    result = watch(command, lambda: len(steps()) >= 2, reserve, log)
    done = steps()
    result["seconds"] = done[1]["step_seconds"] if len(done) >= 2 else None
    result["tokens"] = None
    result["phases"] = [done[1][f"{phase}_seconds"] for phase in ("generation", "reference", "update")] \
        if len(done) >= 2 else None
    return result


# ---------------------------------------------------------------------------------------------------------------
# The memory model beside the measurements, and on paper


def estimate(model: Path, name: str, flags: list[str], prompts: int, group: int, new_tokens: int, dtype: str):
    """r1zero's own estimate (preflight.step_memory_estimate, what `train --check` prints) of a row's settings."""
    from r1zero.config import TrainConfig
    from r1zero.preflight import step_memory_estimate

    ranks = 2 if "--fsdp" in flags else 1
    chunk = int(flags[flags.index("--logprob-chunk-tokens") + 1]) if "--logprob-chunk-tokens" in flags else 0
    config = TrainConfig(prompts_per_step=prompts, group_size=group, max_new_tokens=new_tokens, dtype=dtype,
                         kl_coef=BETA, logprob_chunk_tokens=chunk, train_processes=ranks, fsdp=ranks > 1,
                         gradient_checkpointing="--gradient-checkpointing" in flags or name == "trl")
    prompt_tokens = 70  # the R1-Zero template around a sum, in r1zero's word-level tokenizer (66-72 tokens)
    return step_memory_estimate(config, model, prompt_tokens)


def paper_table() -> str:
    """Which Qwen2.5 shapes fit 80 GB GPUs with FSDP2, bfloat16 mixed precision (fp32 master weights and AdamW,
    bf16 reference), checkpointing and chunked log-probabilities, 8 completions of 70 + 1024 tokens per GPU."""
    from r1zero import memory

    lines = ["| model | parameters | 1 GPU | 8 GPUs | 64 GPUs |", "| --- | --- | --- | --- | --- |"]
    for name, shape in SHAPES.items():
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "config.json").write_text(json.dumps({**shape, "vocab_size": VOCABULARY}))
            model = memory.shape_of(folder)
        cells = []
        for gpus in (1, 8, 64):
            step = memory.step_memory(model, memory.StepShape(8, 70, 1024, 8), 4, 2, gradient_checkpointing=True,
                                      logprob_chunk_tokens=int(CHUNK), shards=gpus, activation_bytes=2)
            fits = "fits" if step.total < 80 * memory.GB else "does not fit"
            cells.append(f"{step.total / memory.GB:.0f} GB: {fits}")
        lines.append(f"| {name} | {model.parameters / 1e9:.2f}B | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def largest_rss(result: dict) -> float:
    """The peak RSS of a run's largest process (the driver or a learner rank), in GB."""
    return max([result["driver_rss_gb"], *result["rank_rss_gb"]])


def row_cells(label: str, spec: tuple, runs: list[dict], peer: tuple | None, guess: str) -> list[str]:
    """One table row: a row's figures over its repeats, and its ratios to the TRL row (peer: TRL's spec and runs)."""
    name, _, prompts, group, new_tokens = spec
    rss = spread(run["driver_rss_gb"] for run in runs)
    own = spread(run["driver_own_gb"] for run in runs)
    out_of_memory = sum(run["out_of_memory"] for run in runs)
    peak = show(rss, 1)
    if out_of_memory:
        peak = f"out of memory ({out_of_memory} of {len(runs)}) at {peak}"
    ranks = []
    for index in range(max(len(run["rank_rss_gb"]) for run in runs)):
        present = [run for run in runs if len(run["rank_rss_gb"]) > index]
        ranks.append(f"{statistics.median(run['rank_rss_gb'][index] for run in present):.1f} "
                     f"({statistics.median(run['rank_own_gb'][index] for run in present):.1f})")
    finished = [run for run in runs if run["seconds"]]
    seconds = show(spread(run["seconds"] for run in finished), 0) if finished else "-"
    phases = " / ".join(f"{statistics.median(run['phases'][i] for run in finished):.0f}" for i in range(3)) \
        if finished else "-"
    if name == "trl":
        rss_ratio = seconds_ratio = "(peer)"
    elif peer is None or peer[0][2:] != spec[2:]:
        rss_ratio = seconds_ratio = "-"  # no TRL row in this run, or not at this row's shape
    else:
        peer_runs = peer[1]
        rss_ratio = ratio_cell([None if run["out_of_memory"] else largest_rss(run) for run in runs],
                               [None if run["out_of_memory"] else largest_rss(run) for run in peer_runs])
        seconds_ratio = ratio_cell([run["seconds"] for run in runs], [run["seconds"] for run in peer_runs])
    return [label, f"{prompts} x {group} x {new_tokens}", peak, show(own, 1), ", ".join(ranks) or "-", seconds,
            phases, rss_ratio, seconds_ratio, guess]


def phases_table(runs: dict[str, list[dict]]) -> str:
    """Each r1zero row's processes, and their peak own pages in each phase (--phases)."""
    rows = []
    for label, each in runs.items():
        measured = [run["phases_own_gb"] for run in each if run.get("phases_own_gb")]
        for who in sorted({who for run in measured for phase in run.values() for who in phase}):
            cells = []
            for phase in PHASES:
                values = [run[phase][who] for run in measured if who in run.get(phase, {})]
                cells.append(f"{statistics.median(values):.1f}" if values else "-")
            rows.append([label, who, *cells])
    return markdown_table(["row", "process", *PHASES], rows) if rows else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS),
                        help="the rows to run (default all; none with --large: only the large one)")
    parser.add_argument("--large", action="store_true", help="also r1zero's best path at 8 x 8 x 256")
    parser.add_argument("--shape", default="0.5b", choices=list(SHAPES))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--reserve", type=float, default=1.0,
                        help="a row is killed when the machine has less than this many GB available (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep each row's folder (logs) in --workdir")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="prompts per step (default 8)")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="at most, per sample (default 128)")
    parser.add_argument("--steps", type=int, default=2,
                        help="steps per r1zero row; s/step is the last one's (default 2: step 1 warms up)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each row, the rows alternated (A B B A ...; default 1)")
    parser.add_argument("--phases", action="store_true",
                        help="r1zero rows run to their end (the last step's evaluation, its checkpoint, the final "
                             "model) and report each process's own pages by phase")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "r1zero-memory-benchmark"))
    add_output_argument(parser)
    args = parser.parse_args(argv)
    info = print_header()
    model = make_model(Path(args.workdir) / f"qwen2-{args.shape}", args.shape)
    specs = {name: (name, ROWS[name], args.prompts, GROUP, args.new_tokens) for name in args.rows}
    if args.large:
        specs[LARGE_LABEL] = LARGE
    runs: dict[str, list[dict]] = {label: [] for label in specs}
    for repeat, label in alternate(list(specs), args.repeats):
        name, flags, prompts, group, new_tokens = specs[label]
        folder = Path(tempfile.mkdtemp(dir=args.workdir, prefix=f"{name}-"))
        if name == "trl":
            result = run_trl(model, prompts, new_tokens, args.reserve, folder)
        else:
            result = run_r1zero(model, flags, prompts, group, new_tokens, args.dtype, args.reserve, folder,
                                args.steps, args.phases)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        runs[label].append(result)
        seconds = f"{result['seconds']:.0f} s/step" if result["seconds"] else "no step timed"
        print(f"  {label}, repeat {repeat + 1}: peak RSS {result['driver_rss_gb']:.1f} GB (own "
              f"{result['driver_own_gb']:.1f})" + (", out of memory" if result["out_of_memory"] else "") +
              f", {seconds}", flush=True)
        print(json.dumps({"row": label, "repeat": repeat, **result}), file=sys.stderr, flush=True)
    columns = ["row", "prompts x samples x tokens", "peak RSS GB", "own GB", "rank peaks RSS GB (own)", "s/step",
               "generation / reference / update s", "peak RSS ratio (r1zero / TRL)", "s/step ratio (r1zero / TRL)",
               "estimate GB (per process)"]
    peer = (specs["trl"], runs["trl"]) if "trl" in specs else None
    guesses = {label: estimate(model, spec[0], *spec[1:], args.dtype).describe() for label, spec in specs.items()}
    rows = [row_cells(label, spec, runs[label], peer, guesses[label]) for label, spec in specs.items()]
    print()
    print(markdown_table(columns, rows))
    phase_table = phases_table(runs) if args.phases else ""
    if phase_table:
        print(f"\nPeak own pages (RssAnon) by phase, GB (medians over the repeats):\n\n{phase_table}")
    paper = paper_table()
    paper_title = ("On paper (r1zero.memory), FSDP2 over 80 GB GPUs, bfloat16 mixed precision, checkpointing, "
                   "chunked log-probabilities, 8 completions of 70 + 1024 tokens per GPU:")
    print(f"\n{paper_title}\n")
    print(paper)
    notes = (f"{args.shape} shape, {args.dtype}, beta {BETA}; {args.repeats} run(s) of each row, the rows "
             "alternated. Peak RSS and own pages: of the training process (the driver), medians over the repeats "
             "with their range; rank peaks: medians. The ratios: the row's largest process's peak RSS and its s/step "
             "over the TRL row's of the same run (median over median, the range of the repeat-by-repeat ratios "
             "in brackets); runs out of memory are left out of the RSS ratio.\n\n"
             f"{paper_title}\n\n{paper}" +
             (f"\n\nPeak own pages (RssAnon) by phase, GB (medians over the repeats):\n\n{phase_table}"
              if phase_table else ""))
    # a --phases run is its own series: its few rows do not stand in for the whole table
    write_results(args.output, "memory_phases" if args.phases else "memory", info, columns, rows,
                  {"shape": args.shape, "dtype": args.dtype, "runs": runs, "estimates": guesses}, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
