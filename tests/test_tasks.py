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
