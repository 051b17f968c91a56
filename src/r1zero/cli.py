"""The `r1zero` command.

    r1zero train [--config recipes/NAME.yaml] [--any-setting VALUE ...]
    r1zero eval --model DIR [--task NAME | --dataset FILE] [--samples K] [--output FILE.json]
    r1zero report DIR
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

from r1zero.config import ConfigError, TrainConfig, field_docs, field_types, load_config


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML recipe; flags given here override its values")
    parser.add_argument("--check", action="store_true", help="validate the settings, print them and exit")
    docs = field_docs(TrainConfig)
    for setting in dataclasses.fields(TrainConfig):
        default = setting.default if setting.default is not dataclasses.MISSING else setting.default_factory()
        flag = "--" + setting.name.replace("_", "-")
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


def command_train(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    config = load_config(args.config, overrides)
    config.validate()
    if args.check:
        from r1zero.config import to_yaml

        print(to_yaml(config), end="")
        print("settings are valid")
        return 0
    from r1zero.trainer import train

    train(config)
    return 0


def command_eval(args: argparse.Namespace) -> int:
    import torch

    from r1zero.evaluation import evaluate, plain_metrics
    from r1zero.models import load_model, load_tokenizer, resolve_device, resolve_model_path
    from r1zero.rollout.transformers_engine import TransformersEngine
    from r1zero.tasks import load_problems
    from r1zero.templates import STOP_STRING, build_prompt

    task = args.task or "sums"
    probe = TrainConfig(model=args.model, task=task, dataset=None, eval_dataset=None, eval_samples=args.samples)
    probe.validate()
    problems = load_problems(task, None, args.dataset, args.problems, args.seed) if args.dataset is None \
        else load_problems(task, args.dataset, args.dataset, args.problems, args.seed)
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path, "float32", resolve_device(args.device), trainable=False)
    engine = TransformersEngine(model, tokenizer, STOP_STRING)
    prompts = [tokenizer(build_prompt(e.prompt, args.template, tokenizer), add_special_tokens=False)["input_ids"]
               for e in problems.held_out]
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


def command_pretrain(args: argparse.Namespace) -> int:
    from r1zero.pretrain import PretrainSettings, pretrain

    settings = PretrainSettings(**({"steps": args.steps} if args.steps else {}))
    pretrain(args.output_dir, settings)
    print(f"saved {args.output_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1zero", description="DeepSeek-R1-Zero style RL from a base model.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="RL-train a base model (no arguments: the built-in default)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_train_flags(train)
    train.set_defaults(run=command_train)

    evaluate = commands.add_parser("eval", help="evaluate a model on held-out problems")
    evaluate.add_argument("--model", default="builtin", help="'builtin' or a Hugging Face model folder")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--task", help="built-in task (default: sums, when no dataset is given)")
    source.add_argument("--dataset", help="JSONL file of problems (prompt, answer), scored with the math reward")
    evaluate.add_argument("--problems", type=int, default=200, help="held-out problems to evaluate")
    evaluate.add_argument("--samples", type=int, default=4,
                          help="K, samples per problem for pass@1, pass@k (k = 1, 2, 4, ..., K) and maj@K")
    evaluate.add_argument("--temperature", type=float, default=1.0)
    evaluate.add_argument("--max-new-tokens", type=int, default=48)
    evaluate.add_argument("--template", default="r1_zero")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--output", help="write the metrics JSON here, and every sample to "
                                           "FILE.samples.jsonl beside it")
    evaluate.set_defaults(run=command_eval)

    report = commands.add_parser("report", help="write DIR/report.html (curves, samples, settings, alerts)")
    report.add_argument("run_dir", metavar="DIR", help="output folder of `r1zero train`")
    report.set_defaults(run=command_report)

    pre = commands.add_parser("pretrain", help="rebuild the built-in base model from its synthetic corpus")
    pre.add_argument("--output-dir", default="base-model")
    pre.add_argument("--steps", type=int, default=0, help="optimiser steps (0: the shipped model's schedule)")
    pre.set_defaults(run=command_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"r1zero: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
