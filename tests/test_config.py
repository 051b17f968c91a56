"""Settings: one dataclass, YAML and CLI derived from it, everything validated before a model loads."""

import dataclasses

import pytest

from r1zero.cli import build_parser, main
from r1zero.config import ConfigError, TrainConfig, field_docs, load_config, parse_value
from r1zero.preflight import check_settings


def test_every_setting_has_a_docstring():
    docs = field_docs(TrainConfig)
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not docs.get(f.name)]
    assert missing == []


def test_recipe_then_command_line_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 3.0e-6\nkl_coef: 0.001\ngroup_size: 16\n")
    config = load_config(recipe, {"learning_rate": "1e-6"})
    assert config.learning_rate == 1e-6  # the flag wins over the recipe
    assert config.kl_coef == 0.001 and config.group_size == 16  # the recipe wins over the defaults
    assert config.max_new_tokens == TrainConfig().max_new_tokens


def test_cli_flags_are_generated_from_the_dataclass():
    args = build_parser().parse_args(["train", "--learning-rate", "1e-6", "--reward-weights", "accuracy=1,format=0.25",
                                      "--no-whiten-advantages", "--report-to", "wandb,trackio"])
    assert args.learning_rate == "1e-6" and args.whiten_advantages is False
    assert parse_value("report_to", args.report_to, "cli") == ["wandb", "trackio"]
    assert parse_value("reward_weights", args.reward_weights, "cli") == {"accuracy": 1.0, "format": 0.25}


@pytest.mark.parametrize("yaml_text, message", [
    ("learning_rat: 1e-6\n", "unknown setting 'learning_rat'; did you mean learning_rate"),
    ("group_size: many\n", "setting 'group_size' expects an integer, got 'many'"),
    ("- a\n- b\n", "a recipe is a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_recipes_name_the_problem(tmp_path, yaml_text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as error:
        load_config(recipe)
    assert "bad.yaml" in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    ({"advantage": "gpro"}, "advantage: 'gpro' is not one of dr_grpo, gae, grpo, reinforce, rloo"),
    ({"loss_aggregation": "mean"}, "loss_aggregation: 'mean' is not one of constant, sequence, token"),
    ({"prompts_per_step": 3, "group_size": 4, "minibatch_size": 5}, "minibatch_size: 5 does not divide the batch"),
    ({"minibatch_size": 8, "microbatch_size": 3}, "microbatch_size: 3 does not divide minibatch_size 8"),
    ({"group_size": 1}, "needs group_size >= 2"),
    ({"dataset": "nowhere.jsonl"}, "dataset: file not found: nowhere.jsonl"),
    ({"model": "no/such/folder"}, "not a Hugging Face model folder"),
    ({"task": "poetry"}, "task: 'poetry' is not one of code, countdown, pair_sums, sums"),
    ({"kl_coef": -1.0}, "kl_coef: must be >= 0"),
    ({"logprob_chunk_tokens": -5}, "logprob_chunk_tokens: must be >= 0"),
])
def test_validation_explains_what_is_valid(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_settings(TrainConfig(**overrides))  # the values, and the files they name


def test_check_flag_validates_and_exits_without_training(capsys):
    assert main(["train", "--check", "--max-steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 3" in out and "settings are valid" in out
    assert main(["train", "--check", "--advantage", "nope"]) == 2
    assert "advantage: 'nope' is not one of" in capsys.readouterr().err


def test_settings_for_ppo_lora_dapo_are_checked():
    with pytest.raises(ConfigError) as error:
        TrainConfig(kl_penalty="reward", gae_gamma=1.5, lora_dropout=1.0, overlong_buffer=100, max_new_tokens=48,
                    dynamic_sampling=True, group_size=1, advantage="reinforce").validate()
    message = str(error.value)
    for expected in ("kl_penalty: 'reward'", "gae_gamma: must be between 0 and 1", "lora_dropout",
                     "overlong_buffer: 100 is longer than max_new_tokens 48", "dynamic_sampling"):
        assert expected in message


def test_an_older_run_folder_with_the_tensorboard_setting_still_loads(tmp_path):
    # before --report-to, config.yaml held `tensorboard: true|false`; a resume of such a run reads it as report_to
    recipe = tmp_path / "config.yaml"
    recipe.write_text("tensorboard: false\nmax_steps: 7\n")
    assert load_config(recipe).report_to == ["none"] and load_config(recipe).max_steps == 7
    recipe.write_text("tensorboard: true\n")
    assert load_config(recipe).report_to == ["tensorboard"]
    recipe.write_text("tensorboard: maybe\n")
    with pytest.raises(ConfigError, match="setting 'tensorboard' expects true or false"):
        load_config(recipe)


@pytest.mark.parametrize("report_to, message", [
    (["tensorbord"], "report_to: unknown logger 'tensorbord'; valid: tensorboard, wandb, trackio"),
    (["none", "wandb"], "'none' turns every logger off"),
])
def test_report_to_names_known_loggers(report_to, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(report_to=report_to).validate()
