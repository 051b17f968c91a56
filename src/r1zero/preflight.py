"""Everything checked before a run starts: settings, the files they name, data, the tokenizer, prompt lengths.

    r1zero train --check --dataset problems.jsonl --model path/to/model    # these checks only, then exit

Nothing here loads model weights or writes a file: a bad input fails in seconds, with the file and row in the
message, and leaves an existing output folder as it was. `train()` runs the same checks first.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple

from r1zero.config import ConfigError, TrainConfig
from r1zero.example import Example
from r1zero.models import SHIPPED_MODELS, context_length, load_tokenizer, resolve_model_path
from r1zero.tasks import ProblemSource, load_problems
from r1zero.tasks.jsonl import DataError
from r1zero.templates import build_prompt

PROMPTS_MEASURED = 4096  # above this many problems, only the longest (in characters) are tokenized
GENERATED_SAMPLE = 64  # training problems drawn (from a separate random.Random) to measure a generated task


class PreparedRun(NamedTuple):
    """What the checks loaded on the way, for the trainer to use."""

    problems: ProblemSource
    model_path: Path
    tokenizer: object
    warnings: list[str]  # settings without effect together (TrainConfig.warnings), and a step too large for memory
    memory: object = None  # r1zero.memory.MemoryEstimate of a training step, per process
    longest_prompt: int = 0  # tokens of the longest measured prompt (measure_prompts)


def check_settings(config: TrainConfig) -> list[str]:
    """Every value (TrainConfig.problems) and every file the settings name: the model folder and its context
    length, the data files, your own reward functions. Raises one ConfigError listing all problems; returns the
    warnings (TrainConfig.warnings)."""
    problems = config.problems() + file_problems(config)
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    return config.warnings()


def file_problems(config: TrainConfig) -> list[str]:
    """What is wrong with the files the settings name, one message each; reads no weights."""
    from r1zero.rewards.custom import is_custom_reward_name, load_reward_function

    problems = []
    for name in config.reward_weights:
        if is_custom_reward_name(name):  # "file.py:function" or "module:function": it must load
            try:
                load_reward_function(name)
            except ValueError as error:
                problems.append(f"reward_weights: {error}")
    for path_setting in ("dataset", "eval_dataset"):
        path = getattr(config, path_setting)
        if path is not None and not Path(path).exists():  # a folder is a dataset saved with save_to_disk
            problems.append(f"{path_setting}: file not found: {path}")
    return (problems + model_problems(config.model, config.max_new_tokens) + logger_problems(config.report_to)
            + engine_problems(config.rollout_engine) + ray_problems(config))


def ray_problems(config: TrainConfig) -> list[str]:
    """Rollout workers and learner ranks run on Ray, an optional dependency: it must be installed when they are
    asked for; the message says what to install."""
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        return []
    asked = {"rollout_workers": (config.rollout_workers, 0, "generate in this process"),
             "train_processes": (config.train_processes, 1, "train in this process")}
    return [f"{name}: {value} needs Ray, which is not installed; pip install 'r1zero[ray]' (or pip install ray), "
            f"or {name} {default} to {instead}" for name, (value, default, instead) in asked.items() if value > default]


def engine_problems(rollout_engine: str) -> list[str]:
    """vLLM must be installed, and loadable, when it is the rollout engine; the message says what to install."""
    if rollout_engine != "vllm":
        return []
    from r1zero.rollout.vllm_engine import vllm_problem

    problem = vllm_problem()
    return [f"rollout_engine: {problem}"] if problem else []


def logger_problems(report_to: list[str]) -> list[str]:
    """Every logger asked for must be importable; the message says what to install."""
    import importlib.util

    from r1zero.tracking import LOGGER_PACKAGES

    return [f"report_to: {name} is asked for but not installed; pip install 'r1zero[{name}]' (or pip install "
            f"{LOGGER_PACKAGES[name]}), or leave it out of report_to"
            for name in report_to if name in LOGGER_PACKAGES and importlib.util.find_spec(LOGGER_PACKAGES[name]) is None]


def model_problems(model: str, max_new_tokens: int) -> list[str]:
    """The model folder must hold a config.json, and its context must leave room for a prompt."""
    try:
        model_path = resolve_model_path(model)
    except FileNotFoundError:
        if model in SHIPPED_MODELS:
            corpus = " --corpus tools" if model == "builtin-tools" else ""
            return [f"model: the built-in base model {model} is missing from {SHIPPED_MODELS[model]}; rebuild it "
                    f"with `r1zero pretrain{corpus} --output-dir {SHIPPED_MODELS[model]}`, or give a Hugging Face "
                    f"model folder"]
        return [f"model: {model} is not a Hugging Face model folder (no config.json); give a local folder saved "
                f"with save_pretrained, or 'builtin'"]
    try:
        context = context_length(model_path)
    except ValueError as error:
        return [f"model: {error}"]
    if context is not None and max_new_tokens >= context:
        return [f"max_new_tokens: {max_new_tokens} leaves no room for the prompt in the model's context of "
                f"{context} tokens (max_position_embeddings in {model_path / 'config.json'}); valid: below "
                f"{context} minus the prompt length"]
    return []


def prepare_run(config: TrainConfig) -> PreparedRun:
    """Check the settings and the files they name, load the problems and the tokenizer, and check that every
    measured prompt plus max_new_tokens fits the model's context. Raises ConfigError, DataError or
    FileNotFoundError."""
    warnings = check_settings(config)
    problems = load_problems(config.task, config.dataset, config.eval_dataset, config.eval_problems, config.seed,
                             config.prompt_field, config.answer_field, config.answer_format, config.dataset_reward)
    model_path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(model_path)
    context = context_length(model_path)
    measured = measure_prompts(problems, tokenizer, config.template, config.extra_instruction())
    if context is not None:
        sources = {Path(path).name: path for path in (config.dataset, config.eval_dataset) if path}
        check_prompts_fit(measured, config.template, config.longest_completion(), context, model_path / "config.json",
                          sources, "max_new_tokens" if config.tools == "none" else "the longest completion with tools")
    longest = max((length for _, length in measured), default=0)
    estimate, memory_warning = check_memory(config, model_path, longest)
    return PreparedRun(problems, model_path, tokenizer, warnings + memory_warning, estimate, longest)


def check_memory(config: TrainConfig, model_path: Path, prompt_tokens: int):
    """The step's estimated peak memory per process (step_memory_estimate) and a warning naming the settings that
    would bring it down when it is above the machine's memory (the GPU's on CUDA). (None, []) for a model the
    estimate cannot read (not a Llama-style config)."""
    from r1zero import memory

    capacity, what = memory.machine_memory(config.device)
    estimate = step_memory_estimate(config, model_path, prompt_tokens, capacity, what.startswith("GPU"))
    if estimate is None or estimate.total <= capacity:
        return estimate, []
    return estimate, [f"memory: a training step needs about {estimate.describe()} per process, more than "
                      f"{what} ({capacity / memory.GB:.0f} GB); to bring it down: "
                      + "; ".join(memory.advice(config, estimate))]


def step_memory_estimate(config: TrainConfig, model_path: Path, prompt_tokens: int, capacity: float = 0.0,
                         on_gpu: bool = False):
    """r1zero.memory's estimate of a training step per process under these settings, prompts of prompt_tokens
    tokens (a colocated vLLM engine included; capacity, on_gpu: the device's memory, for its share); None for a
    model the estimate cannot read. benchmarks/memory.py checks it against measured peaks."""
    from r1zero import memory
    from r1zero.models import PRECISIONS

    try:
        shape = memory.shape_of(model_path)
    except (KeyError, ValueError):
        return None
    rows = config.microbatch_size or config.minibatch_size or config.prompts_per_step * config.group_size
    if config.microbatch_tokens and not config.microbatch_size:
        rows = min(rows, max(1, config.microbatch_tokens // config.max_new_tokens))
    ranks = config.train_processes
    precision = PRECISIONS[config.dtype]
    estimate = memory.step_memory(
        shape, memory.StepShape(-(-rows // ranks), prompt_tokens, config.max_new_tokens, config.group_size),
        parameter_bytes=precision.parameters.itemsize,
        reference_bytes=precision.reference.itemsize if config.kl_coef > 0 and not config.lora_rank else 0,
        trainable_fraction=0.02 if config.lora_rank else 1.0, gradient_checkpointing=config.gradient_checkpointing,
        logprob_chunk_tokens=config.logprob_chunk_tokens, shards=ranks if config.fsdp else 1,
        activation_bytes=(precision.compute or precision.parameters).itemsize,
        replicas=1 if config.fsdp else ranks)
    if config.rollout_engine == "vllm" and not config.rollout_workers:  # colocated: its weights and cache here
        engine_bytes = 2 if config.dtype in ("bfloat16", "float16") else 4
        estimate = estimate._replace(engine=memory.vllm_engine_bytes(
            shape, engine_bytes, config.vllm_kv_cache_gib, config.vllm_memory, capacity, on_gpu))
    return estimate


def measure_prompts(problems: ProblemSource, tokenizer, template: str,
                    extra_instruction: str = "") -> list[tuple[Example, int]]:
    """(problem, tokens of its templated prompt, with the extra instruction a run with tools adds) for every
    held-out and training problem, or the PROMPTS_MEASURED longest in characters when there are more; for a
    generated task, the held-out problems and GENERATED_SAMPLE training problems."""
    candidates = list(problems.held_out)
    if problems.train_examples is not None:
        candidates += problems.train_examples
    elif problems.generated_task is not None:
        candidates += problems.generated_task.sample_train(random.Random(0), GENERATED_SAMPLE)
    if len(candidates) > PROMPTS_MEASURED:
        candidates = sorted(candidates, key=lambda example: len(example.prompt))[-PROMPTS_MEASURED:]
    texts = [build_prompt(example.prompt, template, tokenizer, extra_instruction) for example in candidates]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return list(zip(candidates, lengths))


def check_prompts_fit(measured: list[tuple[Example, int]], template: str, max_new_tokens: int, context: int,
                      context_source: Path, sources: dict[str, str], budget: str = "max_new_tokens") -> None:
    """DataError naming the rows whose templated prompt (measure_prompts) plus max_new_tokens is longer than
    `context` tokens. `sources` maps a data file's name (the prefix of its examples' ids) to the path to show in
    the message."""
    too_long = [(example, length) for example, length in measured if length + max_new_tokens > context]
    if not too_long:
        return
    too_long.sort(key=lambda pair: (-pair[1], _row(pair[0])))  # longest first, then in file order
    rows = "\n  ".join(f"{_where(example, sources)}: {length} tokens" for example, length in too_long[:5])
    more = f"\n  ... and {len(too_long) - 5} more" if len(too_long) > 5 else ""
    longest = too_long[0][1]
    fix = (f"lower {budget} to {context - longest} or less" if longest < context
           else "the prompt alone fills the context")
    if budget != "max_new_tokens" and longest < context:
        fix += (" (max_new_tokens + (max_tool_calls + 1) x (tool_output_tokens + 16 for the markers): lower any of "
                "them)")
    raise DataError(f"{len(too_long)} prompt(s) with the {template} template plus {budget} {max_new_tokens} are "
                    f"longer than the model's context of {context} tokens ({context_source}):\n  {rows}{more}\n"
                    f"Shorten or remove these rows, or {fix}.")


def _row(example: Example) -> int:
    """The row of an example from a data file (ids are "<file name>:<row>"); 0 for generated ones."""
    row = example.id.rpartition(":")[2]
    return int(row) if row.isdigit() else 0


def _where(example: Example, sources: dict[str, str]) -> str:
    """"path/to/data.jsonl:7" for a row of a data file (ids are "<file name>:<row>"), else the example's id."""
    name, _, row = example.id.rpartition(":")
    return f"{sources[name]}:{row}" if name in sources and row.isdigit() else example.id
