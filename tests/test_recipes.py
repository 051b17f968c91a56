"""Each recipe of recipes/ runs a few steps on a tiny random model (tests/conftest.py), with tiny sizes.

The tiny model's word-level tokenizer maps most of a prompt to <unk> and its completions are random words, so it
never solves a problem: accuracy is 0, and these tests check the plumbing (the recipe's task, data, checker and
reward settings reach the run) and the reward-health counters, whose values follow from the completions.
"""

import json
from pathlib import Path

import pytest
import yaml

from r1zero.config import load_config
from r1zero.trainer import train

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TINY = dict(max_steps=2, prompts_per_step=2, group_size=2, minibatch_size=0, microbatch_size=0, max_new_tokens=8,
            eval_problems=2, eval_samples=1, eval_every=0, dtype="float32", report_to=["none"], reward_workers=1,
            checkpoint_every=0, device="cpu")
HEALTH = ("timeouts", "parse_failures", "exceptions")


def run_recipe(name: str, model_dir, tmp_path, **overrides) -> tuple[list[dict], dict]:
    config = load_config(RECIPES / f"{name}.yaml",
                         {**TINY, "model": str(model_dir), "output_dir": str(tmp_path / name), **overrides})
    output = train(config)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "reward/mean" in r], yaml.safe_load((output / "config.yaml").read_text())


def check_steps(steps: list[dict], weights: dict[str, float], samples: int) -> None:
    assert [s["step"] for s in steps] == [1, 2]
    for step in steps:
        assert step["reward/mean"] == pytest.approx(sum(w * step[f"reward/{n}"] for n, w in weights.items()))
        assert step["reward/accuracy"] == 0.0  # random words solve nothing
        for name in weights:
            counts = [step[f"reward_health/{name}/{counter}"] for counter in HEALTH]
            assert all(isinstance(c, int) for c in counts) and sum(counts) <= samples
            assert step[f"reward_health/{name}/timeouts"] == step[f"reward_health/{name}/exceptions"] == 0
        assert step["reward_health/format/parse_failures"] == 0  # the format reward never reports parse failures


def test_countdown_recipe(llama_dir, tmp_path):
    steps, saved = run_recipe("countdown", llama_dir, tmp_path)
    check_steps(steps, {"accuracy": 1.0, "format": 0.1}, samples=4)
    # countdown answers without an <answer> pair are parse failures; random words rarely close one
    assert all(step["reward_health/accuracy/parse_failures"] >= 2 for step in steps)
    assert (saved["task"], saved["learning_rate"], saved["kl_coef"], saved["loss_aggregation"]) == \
        ("countdown", 1e-6, 0.001, "token")


def test_ppo_countdown_recipe(llama_dir, tmp_path):
    steps, saved = run_recipe("ppo_countdown", llama_dir, tmp_path, group_size=1, minibatch_size=1)
    check_steps(steps, {"accuracy": 1.0, "format": 0.1}, samples=2)
    assert all(step["critic/value_loss"] >= 0 and "critic/explained_variance" in step for step in steps)
    assert (saved["advantage"], saved["critic_learning_rate"], saved["kl_penalty"], saved["kl_coef"]) == \
        ("gae", 1e-5, "reward", 0.001)


def test_math_jsonl_recipe_on_a_gsm8k_style_file(llama_dir, tmp_path):
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {a}?", "answer": f"{a} + {a} = {2 * a}\n#### "
                                        f"{2 * a}"}) + "\n" for a in range(1, 11)))
    steps, saved = run_recipe("math_jsonl", llama_dir, tmp_path, dataset=str(data), prompt_field="question",
                              answer_format="gsm8k")
    check_steps(steps, {"accuracy": 1.0, "format": 0.5}, samples=4)
    assert (saved["dataset_reward"], saved["answer_format"], saved["group_size"], saved["kl_estimator"]) == \
        ("math", "gsm8k", 2, "k3")


def test_code_recipe(llama_dir, tmp_path):
    steps, saved = run_recipe("code", llama_dir, tmp_path, code_test_timeout_seconds=1.0, reward_timeout_seconds=8)
    check_steps(steps, {"accuracy": 1.0, "format": 0.5}, samples=4)
    assert (saved["task"], saved["code_partial_credit"], saved["clip_high"], saved["kl_coef"]) == \
        ("code", False, 0.28, 0.0)


@pytest.mark.parametrize("name, expected", [
    ("gspo", ("gspo", 3e-4, 4e-4, "sequence", 128)),
    ("cispo", ("cispo", 1.0, 0.28, "token", 128)),
])
def test_gspo_and_cispo_recipes(llama_dir, tmp_path, length_reward, name, expected):
    # TINY's one minibatch would leave the ratio at 1: keep the recipe's split of the rollout (2 steps of 2 rows);
    # a length reward gives the random model's groups a signal
    weights = {"accuracy": 1.0, "format": 0.5, "length": 2.0}
    steps, saved = run_recipe(name, llama_dir, tmp_path, minibatch_size=2, reward_weights=weights)
    check_steps(steps, weights, samples=4)
    assert (saved["policy_loss"], saved["clip_low"], saved["clip_high"], saved["loss_aggregation"]) == expected[:4]
    assert load_config(RECIPES / f"{name}.yaml").minibatch_size == expected[4]
    assert all(step["kl"] == 0.0 and step["grad_norm"] > 0 for step in steps)  # no KL term; the policy moves


def test_recipes_cite_a_source_for_every_value():
    for path in RECIPES.glob("*.yaml"):
        for line in path.read_text().splitlines():
            if line and not line.startswith("#") and ":" in line and not line.rstrip().endswith(":"):
                assert "#" in line or line.split(":")[0].strip() in ("dtype", "advantage", "clip_high"), \
                    f"{path.name}: no source for {line.strip()!r}"


# ---------------------------------------------------------------------------------------------------------------
# Custom rewards in a run (the same tiny setup)

CUSTOM = '''
def length(completion, example):
    return len(completion) / 100, f"{len(completion)} characters"

def broken(completion, example):
    return example.metadata["no such field"]
'''


def test_a_custom_reward_trains_and_one_that_always_raises_stops_the_run(llama_dir, tmp_path, monkeypatch):
    from r1zero.config import TrainConfig
    from r1zero.rewards import RewardError

    (tmp_path / "my_rewards.py").write_text(CUSTOM)
    monkeypatch.chdir(tmp_path)
    settings = {**TINY, "model": str(llama_dir), "max_steps": 1}
    output = train(TrainConfig(**settings, output_dir=str(tmp_path / "ok"),
                               reward_weights={"accuracy": 1.0, "my_rewards.py:length": 2.0}))
    (step,) = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()
               if "reward/mean" in line]
    assert step["reward/my_rewards.py:length"] > 0  # completions are not empty
    assert step["reward/mean"] == pytest.approx(step["reward/accuracy"] + 2.0 * step["reward/my_rewards.py:length"])
    assert step["reward_health/my_rewards.py:length/exceptions"] == 0
    with pytest.raises(RewardError, match=r"reward 'my_rewards.py:broken' raised on all 4 samples of this step, "
                                          r"e\.g\. KeyError: 'no such field'"):
        train(TrainConfig(**settings, output_dir=str(tmp_path / "broken"),
                          reward_weights={"accuracy": 1.0, "my_rewards.py:broken": 1.0}))
