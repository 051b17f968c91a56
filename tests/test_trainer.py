"""The training loop: log-probabilities over shared prompts, and short real runs on Llama and Qwen2 models."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from r1zero.config import TrainConfig
from r1zero.rewards import REWARD_FUNCTIONS
from r1zero.algorithms import token_logprobs
from r1zero.models import full_sequence_logprobs, length_buckets, shared_prompt_forward
from r1zero.trainer import train
from r1zero.update import pack_rollout


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_shared_prompt_logprobs_equal_a_full_forward_pass_with_their_gradients(request, architecture):
    """Each prompt run once for its group gives the same log-probs and gradient as whole sequences."""
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"{architecture}_dir"))
    prompts = [[3, 4, 5, 6], [7, 8], [9]]
    completions = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19], [20], [21, 22]]
    rollout = pack_rollout(prompts, completions, 2, 0, torch.zeros(6), torch.device("cpu"))
    # the plain way: every row is its full left-padded prompt followed by its completion
    input_ids = torch.cat([rollout.prompt_ids[rollout.group_index], rollout.completion_ids], dim=1)
    attention = torch.cat([rollout.prompt_mask[rollout.group_index], rollout.completion_mask.long()], dim=1)
    mask = rollout.completion_mask
    plain = full_sequence_logprobs(model, input_ids, attention, rollout.prompt_ids.shape[1])
    (plain * mask).sum().backward()
    plain_grad = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    shared, _ = rollout.logprobs(model)
    (shared * mask).sum().backward()
    torch.testing.assert_close(shared * mask, plain * mask, atol=1e-5, rtol=0)
    for got, expected in zip((p.grad for p in model.parameters()), plain_grad):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # a subset of rows whose groups are split (rows 1 and 2 answer prompts 0 and 1)
    subset, _ = rollout.rows(torch.tensor([2, 1])).logprobs(model)
    torch.testing.assert_close(subset * mask[[2, 1]], (plain * mask)[[2, 1]].detach(), atol=1e-5, rtol=0)
    # length buckets at 3 positions a bucket (lengths 1,1,2,2,3,4 sorted: [1,1,2,2] cut to 2 tokens and [3,4] to 4
    # cost 8 + 8 + 2*3 = 22; one bucket 24 + 3, [1,1][2,2][3,4] 2 + 4 + 8 + 9 = 23), each with its own copy of the
    # prompt cache, one backward: the same numbers and gradients again
    assert [(r.tolist(), w) for r, w in length_buckets(mask.sum(-1).long(), 3)] == [([1, 4, 2, 5], 2), ([0, 3], 4)]
    assert [(r.tolist(), w) for r, w in length_buckets(mask.sum(-1).long(), 0)] == [
        ([1, 4], 1), ([2, 5], 2), ([0], 3), ([3], 4)]  # free buckets: one per length, no padding at all
    model.zero_grad()
    logits = shared_prompt_forward(model, rollout.prompt_ids, rollout.prompt_mask, rollout.group_index,
                                   rollout.completion_ids, rollout.completion_mask, bucket_cost=3)
    bucketed = token_logprobs(logits, rollout.completion_ids)
    (bucketed * mask).sum().backward()
    torch.testing.assert_close(bucketed * mask, plain * mask, atol=1e-5, rtol=0)
    for got, expected in zip((p.grad for p in model.parameters()), plain_grad):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert length_buckets(torch.tensor([3, 3, 4, 4]), 2) is None  # 16 + 2 against 6 + 8 + 4: a tie, one pass
    assert len(length_buckets(torch.tensor([3, 3, 4, 4]), 1)) == 2  # 17 against 16


def test_prompt_passes_compute_logits_at_the_last_prompt_position_only(llama_dir):
    """The prompt pass of the log-probabilities and the engine's prefill need one position's logits per prompt;
    the others would cost B x P x V floats (gigabytes with a 150k vocabulary)."""
    from r1zero.models import load_tokenizer
    from r1zero.rollout.transformers_engine import TransformersEngine

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    positions = []  # the sequence length of every input the LM head sees
    model.lm_head.register_forward_hook(lambda module, inputs, output: positions.append(inputs[0].shape[1]))
    rollout = pack_rollout([[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13]], [[14, 15], [16], [17], [18, 19]], 2, 0,
                           torch.zeros(4), torch.device("cpu"))
    rollout.logprobs(model)
    assert positions[0] == 1  # the prompt pass, 6 positions wide
    assert positions[1:] == [2]  # then the completions, lengths 2, 1, 1, 2, in one bucket 2 wide
    positions.clear()
    TransformersEngine(model.eval(), load_tokenizer(llama_dir)).generate([[3, 4, 5, 6, 7, 8]], 2, 3, 1.0, seeds=[0])
    assert positions[0] == 1  # the prefill


def _read_metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_short_run_on_a_local_hugging_face_model(request, tmp_path, monkeypatch, architecture):
    model_dir = request.getfixturevalue(f"{architecture}_dir")
    # A random model never answers right; a length reward gives the groups a signal so the policy moves.
    monkeypatch.setitem(REWARD_FUNCTIONS, "length", lambda completion, example: len(completion) / 100)
    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path / "run"), max_steps=3, prompts_per_step=2,
                         group_size=4, max_new_tokens=8, eval_problems=4, eval_samples=2, eval_every=2,
                         kl_coef=0.05, updates_per_batch=2, minibatch_size=4, learning_rate=1e-2,
                         reward_weights={"accuracy": 1.0, "format": 0.5, "length": 2.0})
    output = train(config)
    records = _read_metrics(output)
    steps = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if "eval/pass@1" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [r["step"] for r in evals] == [0, 2, 3]  # before any update, every 2 steps, and at the end
    for record in steps:
        # the total is the weighted sum of the logged components
        assert record["reward/mean"] == pytest.approx(
            record["reward/accuracy"] + 0.5 * record["reward/format"] + 2.0 * record["reward/length"])
        assert 0.0 <= record["zero_std_fraction"] <= 1.0 and record["kl"] >= 0.0
        assert 1 <= record["response/length_mean"] <= 8
    assert steps[-1]["kl"] > 0  # mu = 2 moved the policy away from the reference
    for key in ("entropy", "clip_fraction", "time/step_seconds", "throughput/tokens_per_second"):
        assert key in steps[0]
    for record in steps:  # the phases are parts of the step: each positive, together no longer than it
        phases = [record[f"time/{name}_seconds"] for name in ("generation", "logprobs", "update")]
        assert min(phases) > 0 and sum(phases) <= record["time/step_seconds"]
    for key in ("eval/accuracy_greedy", "eval/format"):
        assert 0.0 <= evals[0][key] <= 1.0
    trained = AutoModelForCausalLM.from_pretrained(output / "final")
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    moved = sum((a - b).abs().sum().item() for a, b in zip(trained.parameters(), base.parameters()))
    assert moved > 0  # the saved model is the trained one, loadable by plain transformers
    assert "kl_coef: 0.05" in (output / "config.yaml").read_text()


def test_same_seed_repeats_a_cpu_run_exactly(llama_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        config = TrainConfig(model=str(llama_dir), output_dir=str(tmp_path / name), max_steps=2, prompts_per_step=2,
                             group_size=3, max_new_tokens=6, eval_problems=2, eval_samples=1, report_to=["none"])
        records = _read_metrics(train(config))
        runs.append([{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in records])
    assert runs[0] == runs[1]


def test_user_dataset_trains_with_the_math_reward(llama_dir, tmp_path):
    data = tmp_path / "problems.jsonl"
    rows = [{"question": f"What is {a} + {a}", "solution": str(2 * a)} for a in range(1, 11)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = TrainConfig(model=str(llama_dir), dataset=str(data), prompt_field="question", answer_field="solution",
                         output_dir=str(tmp_path / "run"), max_steps=1, prompts_per_step=2, group_size=2,
                         max_new_tokens=6, eval_problems=2, eval_samples=1, report_to=["none"])
    records = _read_metrics(train(config))
    assert records[0]["step"] == 0 and "eval/pass@1" in records[0]
    assert records[1]["step"] == 1 and "reward/accuracy" in records[1]


def test_time_budget_stops_early_and_still_evaluates_and_saves(llama_dir, tmp_path):
    config = TrainConfig(model=str(llama_dir), output_dir=str(tmp_path / "run"), max_steps=50, prompts_per_step=2,
                         group_size=2, max_new_tokens=6, eval_problems=2, eval_samples=1, eval_every=0,
                         report_to=["none"], time_budget_seconds=1e-9)  # spent by the end of the first step
    output = train(config)
    records = _read_metrics(output)
    assert [r["step"] for r in records if "reward/mean" in r] == [1]
    assert [r["step"] for r in records if "eval/pass@1" in r] == [0, 1]  # before training, and at the stop
    assert (output / "final" / "config.json").is_file() and (output / "checkpoints" / "step_000001").is_dir()


GRADIENT_HASHES = """
import hashlib, torch
from transformers import AutoModelForCausalLM
from r1zero.models import load_tokenizer, shared_prompt_forward
from r1zero.models import SHIPPED_MODEL
from r1zero.rollout.transformers_engine import TransformersEngine
from r1zero.tasks import sums
from r1zero.templates import build_prompt
from r1zero.update import pack_rollout

torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL)
tokenizer = load_tokenizer(SHIPPED_MODEL)
prompts = [tokenizer(build_prompt(e.prompt), add_special_tokens=False)["input_ids"] for e in sums.held_out(16)]
for seed in range(12):
    seeds = [16 * seed + i for i in range(16)]
    generation = TransformersEngine(model, tokenizer).generate(prompts, 8, 40, 1.0, seeds=seeds)
    rollout = pack_rollout(prompts, generation.completions, 8, tokenizer.pad_token_id, torch.zeros(128),
                           torch.device("cpu"))
    model.zero_grad()
    logits = shared_prompt_forward(model, rollout.prompt_ids, rollout.prompt_mask, rollout.group_index,
                                   rollout.completion_ids, rollout.completion_mask)
    (logits * rollout.completion_mask[..., None]).sum().backward()
    print(hashlib.md5(torch.cat([p.grad.flatten() for p in model.parameters()]).numpy().tobytes()).hexdigest())
"""


def test_bucketed_gradients_repeat_bit_for_bit_across_processes():
    # Seeded CPU runs repeat exactly (docs/reproducibility.md). Twelve rollouts of 128 rows on the shipped model, so every one runs
    # in length buckets; two fresh processes must produce the same gradient bits. (Indexing the prompt cache with
    # x[rows] instead of index_select made 2 of these 12 differ between processes: its backward accumulates repeated
    # rows in a thread-dependent order.)
    import subprocess
    import sys

    runs = [subprocess.run([sys.executable, "-c", GRADIENT_HASHES], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert len(runs[0].split()) == 12 and runs[0] == runs[1]


def test_out_of_distribution_evaluation_is_logged_beside_the_held_out_one_and_changes_nothing_else(llama_dir,
                                                                                                    tmp_path, capsys):
    runs, starts = {}, {}
    for ood in (True, False):
        config = TrainConfig(model=str(llama_dir), output_dir=str(tmp_path / str(ood)), max_steps=2,
                             prompts_per_step=2, group_size=3, max_new_tokens=6, eval_problems=3, eval_samples=2,
                             eval_every=1, report_to=["none"], eval_out_of_distribution=ood)
        runs[ood] = [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))}
                     for r in _read_metrics(train(config))]
        starts[ood] = next(line for line in capsys.readouterr().out.splitlines() if "-parameter model from" in line)
    # the start-up line says how many problems each evaluation runs: eval_problems of each split
    assert "(3 held-out problems, 3 out-of-distribution)" in starts[True]
    assert "(3 held-out problems)" in starts[False]
    evals = [r for r in runs[True] if "eval/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    for record in evals:
        assert {"eval/ood/pass@1", "eval/ood/accuracy_greedy", "eval/ood/pass@2", "eval/ood/format"} <= set(record)
        assert 0.0 <= record["eval/ood/pass@1"] <= 1.0
    # the held-out numbers and the training steps are those of the run without it, draw for draw
    without_ood = [{k: v for k, v in r.items() if not k.startswith("eval/ood/")} for r in runs[True]]
    assert without_ood == runs[False]
    samples = (tmp_path / "True" / "samples_ood" / "step_000002.jsonl").read_text().splitlines()
    assert len(samples) == 3 * 2 and '"problem_id": "sums-ood-0"' in samples[0]
