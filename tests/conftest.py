"""Shared fixtures: tiny randomly initialised Hugging Face models saved to a temporary folder by the test, and
helpers for tiny training runs on them."""

import json

import pytest
import torch

from r1zero.rewards.custom import FileRewardFunction


def save_tiny_model(folder, architecture: str = "llama", hidden_size: int = 32, seed: int = 0):
    """A 2-layer random Llama or Qwen2 with r1zero's word-level tokenizer, saved with save_pretrained."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from r1zero.pretrain import build_corpus, build_tokenizer

    tokenizer = build_tokenizer(build_corpus(200, seed=0))
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(architecture)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("qwen2"), "qwen2")


def tiny_run_config(model_dir, folder, **settings):
    """Settings for a training run of a few seconds on a tiny model, writing into folder/run."""
    from r1zero.config import TrainConfig

    base = dict(model=str(model_dir), output_dir=str(folder / "run"), max_steps=3, prompts_per_step=2, group_size=4,
                max_new_tokens=8, eval_problems=2, eval_samples=1, eval_every=0, report_to=["none"],
                learning_rate=1e-2, reward_weights={"accuracy": 1.0, "format": 0.5, "length": 2.0})
    return TrainConfig(**(base | settings))


def read_metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def kill_first_worker_at_step_2(monkeypatch):
    """Make the first rollout worker's process die at step 2's generate (the second call), before its prompts come
    back; the call then goes on as the run would."""
    import os
    import signal
    import time

    from r1zero.distributed import RolloutWorkers

    calls = {"n": 0}
    generate = RolloutWorkers.generate

    def generate_after_a_kill(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            pid = self.pids()[0]
            os.kill(pid, signal.SIGKILL)
            while True:  # until it is gone or a zombie (the process may vanish between two reads)
                try:
                    with open(f"/proc/{pid}/stat") as stat:
                        if stat.read().split()[2] == "Z":
                            break
                except (FileNotFoundError, ProcessLookupError):
                    break
                time.sleep(0.05)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(RolloutWorkers, "generate", generate_after_a_kill)


def without_timings(records):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in records]


@pytest.fixture
def length_reward(monkeypatch):
    """A random model never answers right; a length reward (the "length" of tiny_run_config) gives every group a
    signal."""
    from r1zero.rewards import REWARD_FUNCTIONS

    monkeypatch.setitem(REWARD_FUNCTIONS, "length", lambda completion, example: len(completion) / 100)


# Rewards that hang, crash, allocate the machine or report their process: the pools must survive them.
HOSTILE_REWARDS = '''
import os, time

def hang(completion, example):
    time.sleep(60)

def crash(completion, example):
    os._exit(3)

def allocate(completion, example):
    return len(bytearray(64 * 2**30))  # 64 GB: beyond the worker's address-space limit

def pid(completion, example):
    time.sleep(float(completion))
    return 1.0, str(os.getpid())

def echo(completion, example):
    time.sleep(float(completion))
    return 1.0, f"{completion} from {os.getpid()}"

for function in (hang, crash, allocate, pid, echo):
    function.needs_isolation = True
'''


@pytest.fixture
def hostile(tmp_path):
    path = tmp_path / "hostile_rewards.py"
    path.write_text(HOSTILE_REWARDS)
    return {name: FileRewardFunction(str(path), name) for name in ("hang", "crash", "allocate", "pid", "echo")}
