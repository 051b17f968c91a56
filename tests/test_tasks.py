"""The built-in task's split and problem sources."""

import random

import pytest

from r1zero.tasks import ProblemSource, load_problems, sums
from r1zero.tasks.jsonl import DataError


def test_sums_questions_and_answers():
    example = sums.make_example((3, 5, 2, 7), "test", 0)
    assert example.prompt == "What is 3 + 5 + 2 + 7" and example.answer == "17"


def test_held_out_split_is_fixed_disjoint_from_training_and_large_enough():
    held_out = sums.held_out(200)
    tuples = [tuple(e.metadata["numbers"]) for e in held_out]
    assert len(set(tuples)) == 200 and all(sums.is_held_out(t) for t in tuples)
    assert [e.prompt for e in sums.held_out(200)] == [e.prompt for e in held_out]  # same every time
    training = sums.sample_train(random.Random(0), 5000)
    assert not any(sums.is_held_out(tuple(e.metadata["numbers"])) for e in training)
    share = sum(sums.is_held_out(sums.random_numbers(random.Random(i))) for i in range(4000)) / 4000
    assert share == pytest.approx(1 / sums.TEST_SHARE, abs=0.03)  # about one tuple in eight is held out


def test_out_of_distribution_split_is_five_numbers_never_seen_in_training_or_the_corpus():
    import re

    from r1zero.models import SHIPPED_MODEL, load_tokenizer
    from r1zero.pretrain import build_corpus

    harder = sums.out_of_distribution(200)
    tuples = [tuple(e.metadata["numbers"]) for e in harder]
    assert len(set(tuples)) == 200 and all(len(t) == 5 for t in tuples)
    assert harder[0].prompt.count("+") == 4 and harder[0].answer == str(sum(tuples[0]))
    assert [e.prompt for e in sums.out_of_distribution(200)] == [e.prompt for e in harder]  # same every time
    assert {len(e.metadata["numbers"]) for e in sums.sample_train(random.Random(0), 2000)} == {3, 4}
    corpus = " ".join(build_corpus(3000, seed=0))
    assert re.search(r"\d+(?: \+ \d+){4}", corpus) is None  # no sum of five numbers anywhere
    tokenizer = load_tokenizer(SHIPPED_MODEL)
    assert all(len(tokenizer.encode(f" {total}", add_special_tokens=False)) == 1 for total in range(5, 46))
    source = load_problems("sums", None, None, eval_problems=50, seed=0)
    assert [e.prompt for e in source.out_of_distribution] == [e.prompt for e in harder[:50]]
    assert load_problems("countdown", None, None, eval_problems=5, seed=0).out_of_distribution == []


def test_dataset_holds_out_rows_that_training_never_sees(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "answer": "{i}"}}\n' for i in range(20)))
    source = load_problems("sums", str(data), None, eval_problems=100, seed=0)
    assert len(source.held_out) == 4  # at most a fifth of 20 rows
    trained = {e.id for _ in range(10) for e in source.next_batch(8)}
    assert trained.isdisjoint({e.id for e in source.held_out}) and len(trained) == 16
    assert source.accuracy_reward == "math"


def test_dataset_epochs_visit_every_row_once_before_repeating():
    rows = [sums.make_example((1, 1, i), "train", i) for i in range(1, 6)]
    source = ProblemSource("x", "integer", [], train_examples=rows, rng=random.Random(3))
    first_epoch = source.next_batch(5)
    assert sorted(e.id for e in first_epoch) == sorted(e.id for e in rows)


def test_too_small_dataset_is_a_clear_error(tmp_path):
    data = tmp_path / "tiny.jsonl"
    data.write_text('{"prompt": "q", "answer": "1"}\n')
    with pytest.raises(DataError, match="tiny.jsonl: 1 rows are too few"):
        load_problems("sums", str(data), None, eval_problems=10, seed=0)


# ----------------------------------------------------------------------------
# countdown and code, the other built-in tasks


def test_countdown_problems_are_solvable_and_split_by_hash():
    from r1zero.rewards import countdown_reward
    from r1zero.tasks import countdown

    training = countdown.sample_train(random.Random(0), 500)
    held_out = countdown.held_out(200)
    for example in training[:100] + held_out:
        numbers, target = example.metadata["numbers"], example.metadata["target"]
        assert 3 <= len(numbers) <= 4 and all(1 <= n <= 99 for n in numbers) and 1 <= target <= 100
        assert example.prompt == (f"Using the numbers {numbers}, create an equation that equals {target}. You can use "
                                  f"basic arithmetic operations (+, -, *, /) and each number can only be used once.")
        assert countdown_reward(f"<answer> {example.answer} </answer>", example) == 1.0  # the kept solution is right
    assert not any(countdown.is_held_out(e.metadata["numbers"], e.metadata["target"]) for e in training)
    keys = {(tuple(sorted(e.metadata["numbers"])), e.metadata["target"]) for e in held_out}
    assert len(keys) == 200 and [e.prompt for e in countdown.held_out(200)] == [e.prompt for e in held_out]
    # the split does not depend on the order the numbers are listed in
    assert countdown.is_held_out([3, 1, 2], 6) == countdown.is_held_out([1, 2, 3], 6)


def test_code_problems_each_pass_their_own_reference_solution():
    from r1zero.rewards import code_reward
    from r1zero.tasks import code

    problems = code.problems()
    assert len(problems) >= 20 and len({p.id for p in problems}) == len(problems)
    for problem in problems:
        score = code_reward(f"<answer>\n```python\n{problem.answer}```\n</answer>", problem)
        assert score == 1.0, (problem.id, score.reason)
    held_out_ids = {e.id for e in code.held_out(100)}
    trained = {e.id for e in code.sample_train(random.Random(0), 300)}
    assert len(held_out_ids) == 9 and trained.isdisjoint(held_out_ids)
    assert len(trained) == len(problems) - 9  # 300 draws visit every training problem


def test_built_in_tasks_name_their_checker():
    assert {name: load_problems(name, None, None, 2, 0).accuracy_reward for name in ("sums", "countdown", "code")} \
        == {"sums": "integer", "countdown": "countdown", "code": "code"}
