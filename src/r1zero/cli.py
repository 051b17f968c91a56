"""The `r1zero` command.

    r1zero train [--config recipes/NAME.yaml] [--any-setting VALUE ...]
    r1zero train --resume DIR [--max-steps N]
    r1zero eval --model DIR [--task NAME | --dataset FILE] [--samples K] [--output FILE.json]
    r1zero report DIR
    r1zero score --reward NAME[=W],... --input FILE.jsonl [--output FILE.jsonl]
    r1zero pretrain [--output-dir DIR]

Every `train` flag is generated from r1zero.config.TrainConfig (its field docstrings are the help text).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from r1zero.config import (RESUME_SETTINGS, ConfigError, TrainConfig, field_docs, field_types, flag_name,
                           load_config)


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML recipe; flags given here override its values")
    parser.add_argument("--check", action="store_true",
                        help="check the settings, the data files, the tokenizer and the prompt lengths (no weights "
                             "are loaded), print the resolved settings and exit")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the run in DIR from its newest complete checkpoint, with the settings of "
                             f"DIR/config.yaml; only {', '.join(RESUME_SETTINGS)} may be given with it")
    docs = field_docs(TrainConfig)
    for setting in dataclasses.fields(TrainConfig):
        default = setting.default if setting.default is not dataclasses.MISSING else setting.default_factory()
        flag = flag_name(setting.name)
        help_text = f"{docs.get(setting.name, '')} (default: {default})".replace("%", "%%")
        if field_types()[setting.name] is bool:
            parser.add_argument(flag, dest=setting.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=setting.name, default=None, metavar=_metavar(setting.name),
                                help=help_text)


def _metavar(name: str) -> str:
    kind = field_types()[name]
    kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
    if typing.get_origin(kind) is dict:
        return "NAME=W,..."
    if typing.get_origin(kind) is list:
        return "A,B,..."
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(kind, "VALUE")


def train_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The settings given as `train` flags (raw values by setting name); the others stay unset (None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}


def command_train(args: argparse.Namespace) -> int:
    from r1zero.checkpoint import (StopSignals, TrainingInterrupted, TrainingStopped, latest_checkpoint,
                                   load_checkpoint, resume_settings)

    overrides = train_overrides(args)
    if args.resume and args.config:
        raise ConfigError("--resume DIR takes the settings of DIR/config.yaml; --config cannot be given with it")
    config = resume_settings(args.resume, overrides) if args.resume else load_config(args.config, overrides)
    if args.check:
        from r1zero.config import to_yaml
        from r1zero.preflight import prepare_run

        prepared = prepare_run(config)
        warnings = prepared.warnings
        if args.resume and (found := latest_checkpoint(args.resume)) is not None:
            load_checkpoint(found)  # its files are checked too
        print(to_yaml(config), end="")
        if prepared.memory is not None:
            print(f"estimated peak memory of a training step: {prepared.memory.describe()} per process")
        for warning in warnings:
            print(f"r1zero: warning: {warning}", file=sys.stderr)
        print("settings are valid")
        return 0
    from r1zero.trainer import train

    try:
        with StopSignals() as stop:  # Ctrl-C: finish the step, save a checkpoint, exit
            train(config, resume=bool(args.resume), stop=stop)
    except TrainingStopped as error:  # non-finite steps: the diagnosis
        print(f"r1zero: error: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as error:
        print(f"r1zero: {error}", file=sys.stderr)
        return error.exit_code
    return 0


def command_eval(args: argparse.Namespace) -> int:
    import torch

    from r1zero.evaluation import evaluate, plain_metrics
    from r1zero.models import load_model, load_tokenizer, resolve_device, resolve_model_path
    from r1zero.preflight import check_settings
    from r1zero.rollout.tool_use import tool_settings, with_tools
    from r1zero.rollout.transformers_engine import TransformersEngine
    from r1zero.tasks import load_problems
    from r1zero.templates import STOP_STRING, encode_prompts

    task = args.task or "sums"
    config = TrainConfig(model=args.model, task=task, dataset=None, eval_dataset=None, eval_samples=args.samples,
                         max_new_tokens=args.max_new_tokens, template=args.template, tools=args.tools,
                         max_tool_calls=args.max_tool_calls, tool_output_tokens=args.tool_output_tokens)
    check_settings(config)
    data = dict(prompt_field=args.prompt_field, answer_field=args.answer_field, answer_format=args.answer_format,
                dataset_reward=args.dataset_reward)
    problems = load_problems(task, None, args.dataset, args.problems, args.seed) if args.dataset is None \
        else load_problems(task, args.dataset, args.dataset, args.problems, args.seed, **data)
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path, "float32", resolve_device(args.device), trainable=False)
    engine = with_tools(TransformersEngine(model, tokenizer, STOP_STRING), tokenizer, tool_settings(config))
    prompts = encode_prompts([example.prompt for example in problems.held_out], args.template, tokenizer,
                             config.extra_instruction())
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    evaluation = evaluate(engine, tokenizer, prompts, problems.held_out, problems.accuracy_reward, args.samples,
                          args.temperature, args.max_new_tokens, generator)
    text = json.dumps(plain_metrics(evaluation.metrics), indent=2)
    print(text)
    if args.output:
        output = Path(args.output)
        output.write_text(text + "\n", encoding="utf-8")
        print(f"samples: {evaluation.write_samples(output.with_suffix('.samples.jsonl'))}")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from r1zero.report import write_report

    print(f"wrote {write_report(args.run_dir)}")
    return 0


def command_score(args: argparse.Namespace) -> int:
    from r1zero.scoring import health_summary, parse_reward_weights, score_completions, write_records

    records, health = score_completions(args.input, parse_reward_weights(args.reward), args.timeout, args.workers,
                                        not args.code_all_or_nothing, args.code_test_timeout)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as stream:
            write_records(records, stream)
    else:
        write_records(records, sys.stdout)
    print(f"scored {len(records)} rows" + (f" into {args.output}" if args.output else "") + f"; "
          f"{health_summary(health)}", file=sys.stderr)
    return 0


def command_pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from r1zero.pretrain import SETTINGS, pretrain

    settings = dataclasses.replace(SETTINGS[args.corpus], **({"steps": args.steps} if args.steps else {}))
    pretrain(args.output_dir, settings)
    print(f"saved {args.output_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1zero", description="DeepSeek-R1-Zero style RL from a base model.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="RL-train a base model (no arguments: the built-in default)")
    # no ArgumentDefaultsHelpFormatter: each setting's help already ends with its real default (flags default to
    # None so that only the flags given override a recipe)
    _add_train_flags(train)
    train.set_defaults(run=command_train)

    evaluate = commands.add_parser("eval", help="evaluate a model on held-out problems")
    evaluate.add_argument("--model", default="builtin", help="'builtin' or a Hugging Face model folder")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--task", help="built-in task (default: sums, when no dataset is given)")
    source.add_argument("--dataset", help="problems: JSONL, Parquet, CSV or a save_to_disk folder (see train's "
                                          "--dataset); checked by --dataset-reward")
    evaluate.add_argument("--prompt-field", default="prompt")
    evaluate.add_argument("--answer-field", default="answer")
    evaluate.add_argument("--answer-format", default="plain", help="plain, gsm8k or boxed (see train's)")
    evaluate.add_argument("--dataset-reward", default="math", help="math, integer, countdown or code")
    evaluate.add_argument("--problems", type=int, default=200, help="held-out problems to evaluate")
    evaluate.add_argument("--samples", type=int, default=4,
                          help="K, samples per problem for pass@1, pass@k (k = 1, 2, 4, ..., K) and maj@K")
    evaluate.add_argument("--temperature", type=float, default=1.0)
    evaluate.add_argument("--max-new-tokens", type=int, default=48)
    evaluate.add_argument("--template", default="r1_zero")
    evaluate.add_argument("--tools", default="none", choices=("none", "python"),
                          help="python: the model may run Python, as in training with --tools python (the template "
                               "says so in one sentence; default markers)")
    evaluate.add_argument("--max-tool-calls", type=int, default=4)
    evaluate.add_argument("--tool-output-tokens", type=int, default=64)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--output", help="write the metrics JSON here, and every sample to "
                                           "FILE.samples.jsonl beside it")
    evaluate.set_defaults(run=command_eval)

    report = commands.add_parser("report", help="write DIR/report.html (curves, samples, settings, alerts)")
    report.add_argument("run_dir", metavar="DIR", help="output folder of `r1zero train`")
    report.set_defaults(run=command_report)

    score = commands.add_parser("score", help="score completions offline: one JSON line per row with the total, "
                                              "each reward's score and the reason")
    score.add_argument("--reward", required=True, metavar="NAME[=W],...",
                       help="rewards and weights (default weight 1): format, integer, math, countdown, code, or "
                            "path/to/file.py:function, module:function; e.g. math,format=0.5")
    score.add_argument("--input", required=True, metavar="FILE.jsonl",
                       help="rows with 'completion' and the example's fields: 'answer' (math, integer), 'numbers' "
                            "and 'target' (countdown), 'tests' and/or 'asserts' (code)")
    score.add_argument("--output", metavar="FILE.jsonl", help="write here instead of stdout")
    score.add_argument("--timeout", type=float, default=10.0,
                       help="hard limit in seconds per sample for math and code (see reward_timeout_seconds)")
    score.add_argument("--workers", type=int, default=0, help="scoring processes (0: min(4, CPU cores))")
    score.add_argument("--code-test-timeout", type=float, default=2.0, help="seconds per code test run")
    score.add_argument("--code-all-or-nothing", action="store_true",
                       help="code reward 1 only when every test passes (default: the share passed)")
    score.set_defaults(run=command_score)

    pre = commands.add_parser("pretrain", help="rebuild the built-in base model from its synthetic corpus")
    pre.add_argument("--output-dir", default="base-model")
    pre.add_argument("--steps", type=int, default=0, help="optimiser steps (0: the shipped model's schedule)")
    pre.add_argument("--corpus", default="sums", choices=("sums", "tools"),
                     help="sums: the built-in model (builtin); tools: the tool model (builtin-tools, for --tools "
                          "python)")
    pre.set_defaults(run=command_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("eval", "pretrain"):  # `train` quiets them itself (r1zero.trainer.start_run)
        from r1zero.tracking import quiet_libraries

        quiet_libraries()
    try:
        return args.run(args)
    except (ConfigError, OSError, ValueError) as error:  # settings, data files, model folders, checkpoints
        print(f"r1zero: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
