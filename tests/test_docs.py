"""Docs that cannot drift: the generated reference pages and blocks equal what the code generates, every key a run
writes to metrics.jsonl is documented, and every `r1zero ...` command in README.md and docs/ parses with the real
command line and gives valid settings. (`mkdocs build --strict`, for links and anchors, runs in .ci/run.)

    python -m pytest tests/test_docs.py -q
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import read_metrics, tiny_run_config

from r1zero import docgen, metric_names
from r1zero.checkpoint import refuse_changes_on_resume
from r1zero.cli import build_parser, train_overrides
from r1zero.config import RESUME_SETTINGS, ConfigError, TrainConfig, field_docs, load_config
from r1zero.rewards import REWARD_FUNCTIONS
from r1zero.trainer import train

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


# ---- generated pages ---------------------------------------------------------------------------------------------

def test_the_generated_pages_and_blocks_are_what_the_code_generates():
    assert docgen.drifted(DOCS) == [], "run: python -m r1zero.docgen"


def test_a_renamed_setting_or_resume_setting_makes_the_committed_pages_drift(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    if (ROOT / "benchmarks" / "results").is_dir():  # the benchmarks page shows the newest results files
        shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    assert docgen.drifted(docs) == []
    # a setting renamed in the code (learning_rate -> lr): the settings page no longer matches
    entries = docgen.setting_entries()
    monkeypatch.setattr(docgen, "setting_entries", lambda: [
        entry._replace(name="lr") if entry.name == "learning_rate" else entry for entry in entries])
    assert docgen.drifted(docs) == [docs / "reference" / "settings.md"]
    monkeypatch.undo()
    # a setting added to those allowed with --resume: the settings page (which marks them) and the block in
    # checkpoints.md no longer match
    monkeypatch.setattr(docgen, "RESUME_SETTINGS", (*RESUME_SETTINGS, "seed"))
    assert set(docgen.drifted(docs)) == {docs / "reference" / "settings.md", docs / "checkpoints.md"}
    docgen.main(["--docs", str(docs)])  # regenerating mends it
    assert docgen.drifted(docs) == [] and "[`--seed`](reference/settings.md#seed)" in (docs / "checkpoints.md").read_text()


def test_every_setting_has_a_docstring_and_a_heading_on_the_settings_page():
    docs = field_docs(TrainConfig)
    page = (DOCS / "reference" / "settings.md").read_text()
    for setting in dataclasses.fields(TrainConfig):
        assert docs.get(setting.name), f"TrainConfig.{setting.name} has no docstring"
        assert f"\n### {setting.name}\n" in page


def test_an_unknown_generated_block_is_an_error_naming_the_page():
    with pytest.raises(ValueError, match="page.md: unknown generated block 'settngs'; valid: resume-settings"):
        docgen.fill_blocks("<!-- generated: settngs -->\n<!-- end generated -->\n", "page.md")


# ---- metrics.jsonl keys ------------------------------------------------------------------------------------------

def test_metric_patterns_match_what_they_say():
    assert metric_names.documented_pattern("reward/accuracy") == "reward/<component>"
    assert metric_names.documented_pattern("reward/mean") == "reward/mean"  # the exact key before the pattern
    assert metric_names.documented_pattern("reward_health/format/timeouts") == "reward_health/<component>/timeouts"
    assert metric_names.documented_pattern("eval/pass@16") == "eval/pass@<k>"
    assert metric_names.documented_pattern("eval/pass@x") is None
    assert metric_names.documented_pattern("reward/a/b") is None  # a component holds no slash
    assert metric_names.documented_pattern("rollout/something_new") is None


@pytest.fixture(scope="module")
def emitted_keys(llama_dir, tmp_path_factory):
    """Every key of metrics.jsonl in three tiny runs: the default algorithm with both evaluation splits, DAPO's
    dynamic sampling with an alert-prone setting, and PPO with a critic."""
    folder = tmp_path_factory.mktemp("metrics")
    runs = [dict(eval_every=1, eval_samples=2),
            dict(dynamic_sampling=True, max_sampling_rounds=2),
            dict(advantage="gae", group_size=1, prompts_per_step=4)]
    keys = set()
    with pytest.MonkeyPatch.context() as patch:  # the "length" reward of tiny_run_config: a signal in every group
        patch.setitem(REWARD_FUNCTIONS, "length", lambda completion, example: len(completion) / 100)
        for index, settings in enumerate(runs):
            for record in read_metrics(train(tiny_run_config(llama_dir, folder / str(index), **settings))):
                keys |= set(record)
    return keys


def test_every_key_a_run_writes_is_documented(emitted_keys):
    undocumented = sorted(key for key in emitted_keys if metric_names.documented_pattern(key) is None)
    assert undocumented == [], f"add these to metric_names.METRICS: {undocumented}"
    for key in emitted_keys:  # eval/ood/<metric> repeats a documented eval/ metric
        if key.startswith(metric_names.EVAL_OOD_PREFIX):
            plain = metric_names.EVAL_PREFIX + key.removeprefix(metric_names.EVAL_OOD_PREFIX)
            assert metric_names.documented_pattern(plain) not in (None, metric_names.EVAL_OOD_PREFIX + "<metric>")


def test_every_key_documented_as_always_written_is_written(emitted_keys):
    always = [pattern for pattern, when, _ in metric_names.METRICS
              if when in (metric_names.EVERY_STEP, metric_names.EVERY_EVALUATION, "every record")]
    missing = [p for p in always if not any(metric_names.metric_pattern(p).match(key) for key in emitted_keys)]
    assert missing == []
    for optional in ("dynamic_sampling/rounds", "critic/value_mean", "eval/ood/pass@1", "eval/maj@2"):
        assert optional in emitted_keys


# ---- commands in the docs ----------------------------------------------------------------------------------------

SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)
INLINE = re.compile(r"(?<!`)`(r1zero [^`]+)`(?!`)")


def documented_commands() -> list[tuple[str, str, bool]]:
    """(file, command, whole) for every `r1zero ...` command in a shell block of README.md or docs/ (whole: a
    command to run as written, where "..." stands for more flags) and every inline code span that starts with one
    (a mention: its flags must exist, though it may leave out required ones or use [optional] notation)."""
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(ROOT))
        for block in SHELL_BLOCK.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                for part in re.split(r"&&|;|\|\|", line.split(" #")[0]):
                    part = part.strip().removeprefix("$ ")
                    if part.startswith("r1zero "):
                        found.append((name, part, True))
        found += [(name, span, False) for span in INLINE.findall(text)]
    return found


def subcommand_parser(name: str):
    parser = build_parser()
    subparsers = next(action for action in parser._actions if action.dest == "command")
    return subparsers.choices[name]


def check_mention(command: str) -> None:
    """Every --flag of a mentioned command exists for its subcommand."""
    words = command.split()
    parser = subcommand_parser(words[1])
    known = {option for action in parser._actions for option in action.option_strings}
    flags = [word.split("=")[0].strip("[]|,.") for word in words]
    unknown = [flag for flag in flags if flag.startswith("--") and flag not in known]
    assert not unknown, f"`{command}`: no such flag {unknown} for r1zero {words[1]}"


def check_command(command: str) -> None:
    """Parse `command` with r1zero's own parser; for train, resolve its settings (defaults, recipe, flags) and
    validate them without reading any other file or starting a run."""
    words = [word for word in shlex.split(command) if word != "..."]
    if "--help" in words or "-h" in words:
        return check_mention(command)
    args = build_parser().parse_args(words[1:])
    if args.command != "train":
        return
    overrides = train_overrides(args)
    if args.resume:  # the run folder need not exist: only what a resume may change is checked
        return refuse_changes_on_resume(Path(args.resume), overrides)
    config = args.config and str(ROOT / args.config)
    load_config(config, overrides).validate()


def test_the_docs_hold_commands_to_check():
    commands = documented_commands()
    files = {name for name, _, whole in commands if whole}
    assert len(commands) >= 20 and "README.md" in files and "docs/checkpoints.md" in files


@pytest.mark.parametrize("where,command,whole", documented_commands())
def test_every_r1zero_command_in_the_docs_parses_and_gives_valid_settings(where, command, whole, capsys):
    if not whole:
        return check_mention(command)
    try:
        check_command(command)
    except SystemExit as exit:  # argparse: an unknown flag or a bad value
        pytest.fail(f"{where}: `{command}` does not parse: {capsys.readouterr().err.strip()} (exit {exit.code})")


def test_a_command_with_a_renamed_flag_or_a_bad_value_fails_the_check():
    check_command("r1zero train --learning-rate 1e-6 --max-steps 10")
    with pytest.raises(SystemExit):
        check_command("r1zero train --lr 1e-6")  # no such flag
    with pytest.raises(Exception, match="group_size"):
        check_command("r1zero train --group-size 1")  # GRPO compares samples within a group
    with pytest.raises(ConfigError, match="--seed cannot change when resuming"):
        check_command("r1zero train --resume runs/x --seed 3")
    with pytest.raises(AssertionError, match="no such flag"):
        check_mention("r1zero eval --model DIR [--tsk NAME]")
    check_mention("r1zero eval --model DIR [--task NAME | --dataset FILE]")
