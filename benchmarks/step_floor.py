"""How far r1zero's GRPO step is from what this machine's matrix products allow: a floor measured, not guessed.

    python benchmarks/step_floor.py               # about 3 minutes on 2 cores
    python benchmarks/step_floor.py --steps 3 --output none    # quicker, noisier, nothing written

The step of step_vs_trl.py on its ~4M-parameter Qwen2 (8 prompts x 8 samples, at most 64 new tokens,
temperature 1, mu 1), run phase by phase with r1zero's own pieces and timed: the rollout (prefill and decode),
the reference log-probabilities (beta > 0 only) and the update. Then, for the same step, every matrix product of
the model's linear layers that the phase cannot do without is replayed alone, with the model's own weights, and
timed; their sum is the phase's floor:
- prefill: each prompt token once (no padding); logits only at each prompt's last position;
- decode: at decode step s, only the rows still generating (no finished rows riding along), q/k/v and gate/up
  fused into one product each, as r1zero's decoder runs them;
- reference and update: each prompt token once, each completion token but the last as an input, logits at every
  completion token; the update adds two products per forward one (the gradients of the input and the weight).
Attention, norms, rotary embeddings, sampling, padding, the optimiser and Python cost nothing in the floor, so
no implementation that uses this BLAS can be faster than it, and the credited-FLOP fraction at the floor is the
most any can reach.

The credited FLOPs are step_vs_trl.py's (2N per generated or reference-scored token, 6N per trained token, N =
parameters), against the fp32 matmul peak of step_vs_trl.matmul_gflops; beta 0 is the same step without the
reference phase. Each figure is the median over --steps steps (after one warm-up step), each floor the best of
--repeats replays. Prints the header, the phases (r1zero seconds, floor seconds, their ratio), then per beta the
step's seconds and both fractions of the peak; with --output (default benchmarks/results/) writes the phase table,
with the beta table in its notes, and the provenance to <date>-step_floor-<commit>.json and .md. It has no peer:
the floor is the yardstick.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).parent))
from step_vs_trl import GROUP, NEW_TOKENS, matmul_gflops, make_qwen2, prompts_text  # noqa: E402
from provenance import add_output_argument, markdown_table, print_header, write_results  # noqa: E402

Product = tuple[int, int, int]  # (M, K, N): an (M, K) input times a (K, N) weight


def decode_rows(lengths: list[int]) -> list[int]:
    """The rows a decode step must run, step by step, for completions of `lengths` tokens: token 0 comes from the
    prefill's logits and token k from decode step k, so a row of L tokens needs steps 1 .. L-1.

    >>> decode_rows([1, 3, 2])  # steps 1 and 2; the 1-token row needs none
    [2, 1]
    """
    return [sum(length > step for length in lengths) for step in range(1, max(lengths, default=0))]


class Widths(NamedTuple):
    """A Llama-family model's layer widths."""

    hidden: int
    intermediate: int
    query: int  # heads x head dim
    key_value: int  # key/value heads x head dim
    vocabulary: int
    layers: int

    @classmethod
    def of(cls, config) -> "Widths":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.hidden_size, config.intermediate_size, config.num_attention_heads * head_dim,
                   config.num_key_value_heads * head_dim, config.vocab_size, config.num_hidden_layers)


def forward_products(widths: Widths, positions: int, logits: int, fused: bool = False) -> list[Product]:
    """The linear layers' products of one forward pass over `positions` tokens, with logits at `logits` of them;
    fused: q/k/v and gate/up as one product each."""
    h, i = widths.hidden, widths.intermediate
    if fused:
        layer = [(positions, h, widths.query + 2 * widths.key_value), (positions, widths.query, h),
                 (positions, h, 2 * i), (positions, i, h)]
    else:
        layer = [(positions, h, widths.query), (positions, h, widths.key_value), (positions, h, widths.key_value),
                 (positions, widths.query, h), (positions, h, i), (positions, h, i), (positions, i, h)]
    return layer * widths.layers + ([(logits, h, widths.vocabulary)] if logits else [])


def backward_products(forward: list[Product]) -> list[Product]:
    """Each forward product (M, K, N) has two in the backward: the input's gradient (M, N) x (N, K) and the
    weight's (K, M) x (M, N)."""
    return [shape for m, k, n in reversed(forward) for shape in ((m, n, k), (k, m, n))]


def flops(products: list[Product]) -> float:
    return float(sum(2 * m * k * n for m, k, n in products))


class Phases(NamedTuple):
    """The products each phase of one step must run."""

    rollout: list[Product]
    reference: list[Product]
    update: list[Product]


def step_products(widths: Widths, prompt_lengths: list[int], lengths: list[int]) -> Phases:
    """The products of a step whose B prompts have `prompt_lengths` tokens and whose completions `lengths`."""
    prompt_tokens, tokens = sum(prompt_lengths), sum(lengths)
    rollout = forward_products(widths, prompt_tokens, len(prompt_lengths))
    for rows in decode_rows(lengths):
        rollout += forward_products(widths, rows, rows, fused=True)
    scored = forward_products(widths, prompt_tokens + tokens - len(lengths), tokens)  # the last token is no input
    return Phases(rollout, scored, scored + backward_products(scored))


def replay_seconds(products: list[Product], weights: dict[tuple[int, int], list[torch.Tensor]],
                   repeats: int) -> float:
    """The best of `repeats` timed runs of `products`, one after another: a random input times the model's weights
    of that shape in turn (model_weights: layer after layer, as a forward pass meets them), or times a random
    matrix where the product has none (a weight's gradient)."""
    inputs = {(m, k): torch.randn(m, k) for m, k, _ in products}
    rights = weights | {(k, n): [torch.randn(k, n)] for _, k, n in products if (k, n) not in weights}
    used = dict.fromkeys(rights, 0)  # products so far with a right operand of each shape
    matrices = []
    for m, k, n in products:
        choices = rights[k, n]
        matrices.append((inputs[m, k], choices[used[k, n] % len(choices)]))
        used[k, n] += 1
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for left, right in matrices:
            torch.mm(left, right)
        best = min(best, time.perf_counter() - started)
    return best


def model_weights(model) -> dict[tuple[int, int], list[torch.Tensor]]:
    """(K, N) -> the model's weights of that shape as (K, N) operands, in the order a forward pass meets them: each
    linear layer's transposed weight (the layout F.linear multiplies by) and its plain one (the backward's), fused
    q/k/v and gate/up included."""
    weights: dict[tuple[int, int], list[torch.Tensor]] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            weights.setdefault((module.in_features, module.out_features), []).append(module.weight.detach().t())
            weights.setdefault((module.out_features, module.in_features), []).append(module.weight.detach())
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        qkv = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]).detach()
        gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
        weights.setdefault((qkv.shape[1], qkv.shape[0]), []).append(qkv.t())
        weights.setdefault((gate_up.shape[1], gate_up.shape[0]), []).append(gate_up.t())
    return weights


# ---------------------------------------------------------------------------------------------------------------
# One step of r1zero, phase by phase, and its floor


def measure_steps(path: Path, steps: int, repeats: int) -> list[dict]:
    """For each of `steps` steps (after one warm-up): r1zero's seconds per phase, the floor's, token counts."""
    from r1zero.config import TrainConfig
    from r1zero.models import load_model, load_tokenizer
    from r1zero.rollout.transformers_engine import TransformersEngine
    from r1zero.templates import STOP_STRING
    from r1zero.update import (Rollout, UpdateSettings, pack_sequences, reference_logprobs, update_plan,
                               update_policy)

    tokenizer = load_tokenizer(path)
    cpu = torch.device("cpu")
    policy = load_model(path, "float32", cpu)
    reference = load_model(path, "float32", cpu, trainable=False)
    config = TrainConfig(model=str(path), group_size=GROUP, max_new_tokens=NEW_TOKENS, kl_coef=0.04,
                         learning_rate=1e-6, microbatch_tokens=4096)
    settings = UpdateSettings.from_config(config)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate)
    engine = TransformersEngine(policy, tokenizer, STOP_STRING)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text, _ in prompts_text()]
    widths, shuffling = Widths.of(policy.config), torch.Generator().manual_seed(0)
    weights = model_weights(policy)  # views of the weights the optimiser updates in place, and the fused copies
    results = []
    for step in range(steps + 1):
        timed = {}
        started = time.perf_counter()
        policy.eval()
        with torch.no_grad():
            generation = engine.generate(prompts, GROUP, NEW_TOKENS, 1.0, seeds=[step * 100 + b for b in
                                                                                  range(len(prompts))])
        policy.train()
        timed["rollout"] = time.perf_counter() - started
        lengths = [len(completion) for completion in generation.completions]
        advantages = torch.randn(len(lengths), generator=torch.Generator().manual_seed(step))  # (N,)
        sequences = pack_sequences(prompts, generation.completions, GROUP, engine.pad_id, cpu)
        started = time.perf_counter()
        ref_logprobs = reference_logprobs(policy, reference, sequences, len(lengths))
        timed["reference"] = time.perf_counter() - started
        rollout = Rollout.of(sequences, advantages=advantages, ref_logprobs=ref_logprobs)
        started = time.perf_counter()
        plan = update_plan(rollout.lengths(), settings, shuffling, cpu)
        update_policy(policy, optimizer, rollout, plan, settings)
        timed["update"] = time.perf_counter() - started
        phases = step_products(widths, [len(p) for p in prompts], lengths)._asdict()
        floor = {name: replay_seconds(products, weights, repeats) for name, products in phases.items()}
        if step:  # the first step warms up
            results.append({"r1zero": timed, "floor": floor, "tokens": sum(lengths),
                            "product_flops": {name: flops(products) for name, products in phases.items()}})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps after one warm-up step (default 6)")
    parser.add_argument("--repeats", type=int, default=3, help="replays of each floor, the best kept (default 3)")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    info = print_header()
    peak = matmul_gflops()
    with tempfile.TemporaryDirectory() as folder:
        path = make_qwen2(Path(folder) / "qwen2-4m")
        from transformers import AutoConfig, AutoModelForCausalLM

        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
                         .parameters())
        results = measure_steps(path, args.steps, args.repeats)

    def median(side: str, phase: str) -> float:
        return statistics.median(r[side][phase] for r in results)

    tokens = statistics.median(r["tokens"] for r in results)
    setting = (f"fp32 matmul peak: {peak:.0f} GFLOP/s; {parameters / 1e6:.2f}M parameters; {tokens:.0f} tokens a "
               f"step (median of {len(results)} steps)")
    print(setting + "\n")
    columns = ["phase", "r1zero s", "floor s (products alone)", "r1zero / floor", "products GFLOP",
               "products GFLOP/s at the floor"]
    rows = []
    for phase in ("rollout", "reference", "update"):
        product_flops = statistics.median(r["product_flops"][phase] for r in results)
        ours, floor = median("r1zero", phase), median("floor", phase)
        rows.append([phase, f"{ours:.3f}", f"{floor:.3f}", f"{ours / floor:.2f}x", f"{product_flops / 1e9:.1f}",
                     f"{product_flops / floor / 1e9:.0f}"])
    print(markdown_table(columns, rows))
    beta_columns = ["beta", "r1zero s/step", "floor s/step", "credited GFLOP", "r1zero % of peak", "floor % of peak"]
    beta_rows = []
    for beta in (0.04, 0.0):
        phases = ("rollout", "reference", "update") if beta else ("rollout", "update")
        ours = sum(median("r1zero", phase) for phase in phases)
        floor = sum(median("floor", phase) for phase in phases)
        credited = (2 * (2 if beta else 1) + 6) * parameters * tokens
        beta_rows.append([beta, f"{ours:.2f}", f"{floor:.2f}", f"{credited / 1e9:.0f}",
                          f"{100 * credited / ours / peak / 1e9:.0f}%", f"{100 * credited / floor / peak / 1e9:.0f}%"])
    print()
    print(markdown_table(beta_columns, beta_rows))
    write_results(args.output, "step_floor", info, columns, rows,
                  {"matmul_gflops": peak, "parameters": parameters, "steps": results,
                   "beta_table": {"columns": beta_columns, "rows": beta_rows}},
                  notes=f"{setting}; each floor the best of {args.repeats} replays.\n\n"
                        f"{markdown_table(beta_columns, beta_rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
