"""The update alone, r1zero's against TRL's, on the 0.5B shape: seconds, CPU time in the kernel, page faults.

    pip install trl==1.16.0                       # TRL for its row only; r1zero does not depend on it
    python benchmarks/update_vs_trl.py            # 16 rows of 70 + 128 tokens, 2 updates a side, 2 repeats:
                                                  # about 18 minutes on 2 cores
    python benchmarks/update_vs_trl.py --rows 32 --sides r1zero trl --repeats 3
    python benchmarks/update_vs_trl.py --repeats 1 --output none      # one process a side, nothing written

A training step's update (forward, backward, gradient clipping, AdamW) on fixed inputs, with no generation
before it, so the two implementations are compared on exactly the same rows: the random Qwen2 of Qwen2.5-0.5B's
shape from benchmarks/memory.py, B = rows / 4 prompts of 70 random tokens, 4 completions each of 128 random
tokens (every completion full length, as in benchmarks/memory.py), beta 0.04, float32, activation checkpointing
on both sides. Each side runs in its own process and does --updates updates; the last one's seconds are reported
(the first allocates AdamW's state), with the process's user and system CPU seconds and minor page faults over
all of them and its peak RSS. Each side runs --repeats times, the sides alternated (r1zero r1zero-glibc trl trl
r1zero-glibc r1zero ...), so drift within the run lands on every side alike; each figure is the median over the
repeats with their range in brackets, and each side's s/update is divided by TRL's of the same run (median over
median, with the range of the repeat-by-repeat ratios). Prints each process's numbers as JSON on stderr, then
the table; with --output (default benchmarks/results/) writes it with the provenance to
<date>-update_vs_trl-<commit>.json and .md.

What it does not tell: the full step. An update's seconds here and inside its trainer differ (there the process
has generated and scored before it and holds more memory; benchmarks/memory.py times the update inside each
trainer), so the two sides compare only with each other, here. Here is where one side's update is changed and
measured alone.

Sides:
  r1zero          update.update_policy as the trainer calls it (chunked log-probabilities through the head, the
                  default chunk), in a process with r1zero's allocator setting (memory.mmap_threshold)
  r1zero-glibc    the same, with glibc's default allocator (what a process gets without r1zero's setting)
  trl             TRL 1.16's training forward: trl.trainer.utils.add_fused_lm_head with log-probabilities and
                  entropy (as GRPOTrainer patches the policy), the model called with labels and fused_lm_head=True,
                  a clipped-ratio loss with the k3 KL, gradient clipping and torch's fused AdamW (the
                  Trainer's default optimiser, adamw_torch_fused); glibc's default allocator, as in GRPOTrainer
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from provenance import (add_output_argument, alternate, markdown_table, print_header, ratio_cell, show,  # noqa: E402
                        spread, write_results)

SIDES = ("r1zero", "r1zero-glibc", "trl")
PROMPT_TOKENS, COMPLETION_TOKENS, GROUP, BETA = 70, 128, 4, 0.04


def fixed_batch(rows: int):
    """(prompt_ids (B, P), completion_ids (N, T), advantages (N,), reference log-probabilities (N, T)), seeded."""
    import torch

    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, 1000, (rows // GROUP, PROMPT_TOKENS), generator=generator)  # (B, P)
    completions = torch.randint(10, 1000, (rows, COMPLETION_TOKENS), generator=generator)  # (N, T)
    advantages = torch.randn(rows, generator=generator)  # (N,)
    reference = -10 * torch.rand(rows, COMPLETION_TOKENS, generator=generator)  # (N, T)
    return prompts, completions, advantages, reference


def r1zero_update(model_dir: Path, rows: int, allocator_setting: bool):
    """A function doing one r1zero update on the fixed batch, as trainer.update_models does it; with
    allocator_setting, in a process set up as the trainer's (memory.return_freed_memory, return_freed_memory_for)."""
    import torch

    from r1zero.config import TrainConfig
    from r1zero.memory import return_freed_memory, return_freed_memory_for
    from r1zero.models import load_policy
    from r1zero.update import Rollout, Sequences, UpdateSettings, update_plan, update_policy

    config = TrainConfig(prompts_per_step=rows // GROUP, group_size=GROUP, max_new_tokens=COMPLETION_TOKENS,
                         kl_coef=BETA, gradient_checkpointing=True, learning_rate=1e-6)
    if allocator_setting:
        return_freed_memory()
    policy = load_policy(model_dir, None, "float32", torch.device("cpu"), gradient_checkpointing=True)
    if allocator_setting:
        return_freed_memory_for(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    prompts, completions, advantages, reference = fixed_batch(rows)
    sequences = Sequences(prompts, torch.ones_like(prompts), torch.arange(len(prompts)).repeat_interleave(GROUP),
                          completions, torch.ones(completions.shape))
    rollout = Rollout.of(sequences, advantages=advantages, ref_logprobs=reference)
    settings = UpdateSettings.from_config(config)
    plan = update_plan(rollout.lengths(), settings, torch.Generator().manual_seed(0), "cpu")
    return lambda: update_policy(policy, optimizer, rollout, plan, settings)


def trl_update(model_dir: Path, rows: int):
    """A function doing one update the way TRL 1.16's GRPOTrainer does its training forward and step."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # TRL's default
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))  # as GRPOTrainer patches its policy
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)  # the Trainer's adamw_torch_fused
    prompts, completions, advantages, reference = fixed_batch(rows)
    input_ids = torch.cat([prompts.repeat_interleave(GROUP, dim=0), completions], dim=1)  # (N, P+T)
    labels = input_ids.clone()
    labels[:, :PROMPT_TOKENS] = -100  # only completion tokens are scored

    def update():
        outputs = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels,
                        fused_lm_head=True)
        logprobs = outputs.log_probs[:, -COMPLETION_TOKENS:]  # (N, T)
        ratio = torch.exp(logprobs - logprobs.detach())
        surrogate = torch.minimum(ratio * advantages[:, None], ratio.clamp(0.8, 1.2) * advantages[:, None])
        log_ratio = reference - logprobs
        kl = torch.exp(log_ratio) - log_ratio - 1  # k3
        loss = (BETA * kl - surrogate).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return update


def worker(side: str, model_dir: Path, rows: int, updates: int) -> dict:
    """Run one side in this process; the numbers as a dict."""
    update = trl_update(model_dir, rows) if side == "trl" else r1zero_update(model_dir, rows, side == "r1zero")
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = []
    for _ in range(updates):
        started = time.perf_counter()
        update()
        seconds.append(time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"side": side, "seconds": seconds, "user": after.ru_utime - before.ru_utime,
            "system": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt,
            "peak_rss_gb": after.ru_maxrss * 1024 / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16, help="completions per update, a multiple of 4 (default 16)")
    parser.add_argument("--updates", type=int, default=2, help="updates per side; the last is timed (default 2)")
    parser.add_argument("--sides", nargs="*", default=list(SIDES), choices=SIDES)
    parser.add_argument("--repeats", type=int, default=2,
                        help="processes per side, the sides alternated (A B C C B A ...; default 2)")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "r1zero-memory-benchmark"))
    add_output_argument(parser)
    args = parser.parse_args(argv)
    if args.rows % GROUP:
        parser.error(f"--rows {args.rows}: must be a multiple of the group size {GROUP}")
    from memory import make_model

    if args.worker:
        model_dir = make_model(Path(args.workdir) / "qwen2-0.5b", "0.5b")
        print(json.dumps(worker(args.worker, model_dir, args.rows, args.updates)))
        return 0
    info = print_header()
    make_model(Path(args.workdir) / "qwen2-0.5b", "0.5b")  # once, before the workers load it
    results: dict[str, list[dict]] = {side: [] for side in args.sides}
    for repeat, side in alternate(args.sides, args.repeats):
        command = [sys.executable, __file__, "--worker", side, "--rows", str(args.rows), "--updates",
                   str(args.updates), "--workdir", args.workdir]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[side].append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps({"repeat": repeat, **results[side][-1]}), file=sys.stderr, flush=True)
    baseline = [result["seconds"][-1] for result in results.get("trl", [])]
    setting = f"{args.rows} rows of {PROMPT_TOKENS} + {COMPLETION_TOKENS} tokens, 0.5B shape, float32, checkpointing"
    print(f"{setting}; {args.repeats} process(es) a side, the sides alternated\n")
    columns = ["side", "s/update (last)", "vs TRL (s/update ratio)", "user s", "system s", "minor faults (M)",
               "peak RSS GB"]
    rows = []
    for side, runs in results.items():
        last = [run["seconds"][-1] for run in runs]
        if side == "trl":
            ratio = "(peer)"
        else:
            ratio = ratio_cell(last, baseline, bold=True)  # '-' without a TRL side
        rows.append([side, show(spread(last), 1), ratio, show(spread(run["user"] for run in runs), 0),
                     show(spread(run["system"] for run in runs), 0),
                     show(spread(run["minor_faults"] / 1e6 for run in runs), 1),
                     show(spread(run["peak_rss_gb"] for run in runs), 1)])
        if side != "trl":
            print(f"  {side}: {rows[-1][1]} s/update, {ratio} TRL's", flush=True)
    print()
    print(markdown_table(columns, rows))
    write_results(args.output, "update_vs_trl", info, columns, rows, {"setting": setting, "runs": results},
                  notes=f"{setting}. Medians over {args.repeats} process(es) a side, the sides alternated; ranges "
                        "in brackets. The ratio: the side's median s/update over TRL's, with the range of the "
                        "repeat-by-repeat ratios.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
