"""Tests of r1zero.tasks.data: users' problems from JSONL, Parquet, CSV and saved datasets, answer extraction,
and the error each malformed row gets (file, row, field), before any model is loaded."""

import json

import pytest

from r1zero.example import Example
from r1zero.tasks import load_problems
from r1zero.tasks.data import extract_reference_answer, load_examples
from r1zero.tasks.jsonl import DataError

datasets = pytest.importorskip("datasets")

ROWS = [
    {"question": "Ann has 3 apples and buys 5. How many?", "answer": "3 + 5 = 8\n#### 8", "level": 1},
    {"question": "A box holds 250 pens; 4 boxes?", "answer": "250 * 4 = 1,000\n#### 1,000", "level": 2},
]
EXPECTED = [
    Example(id="{name}:1", prompt="Ann has 3 apples and buys 5. How many?", answer="8", metadata={"level": 1}),
    Example(id="{name}:2", prompt="A box holds 250 pens; 4 boxes?", answer="1000", metadata={"level": 2}),
]


def write(tmp_path, kind: str, rows=ROWS):
    if kind == "jsonl":
        path = tmp_path / "gsm.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "parquet":
        path = tmp_path / "gsm.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif kind == "csv":
        path = tmp_path / "gsm.csv"
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    else:
        path = tmp_path / "gsm_saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv", "saved"])
def test_every_format_gives_the_same_examples(tmp_path, kind):
    path = write(tmp_path, kind)
    examples = load_examples(path, prompt_field="question", answer_format="gsm8k")
    assert examples == [Example(e.id.format(name=path.name), e.prompt, e.answer, e.metadata) for e in EXPECTED]


def test_a_dataset_dict_folder_names_its_splits(tmp_path):
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"a DatasetDict with splits train, test; give the folder of one split, "
                                        r"e\.g\. .*saved/train"):
        load_examples(folder, prompt_field="question")
    assert len(load_examples(folder / "train", prompt_field="question", answer_format="gsm8k")) == 2


@pytest.mark.parametrize(
    "text, answer_format, expected",
    [
        ("42", "plain", "42"),
        ("She pays 2 * 21 = 42.\n#### 42", "gsm8k", "42"),
        ("#### 1,234,567", "gsm8k", "1234567"),  # thousands separators removed
        ("a #### b\n#### -3", "gsm8k", "-3"),  # the last marker
        ("So $x = \\boxed{\\frac{1}{2}}$.", "boxed", "\\frac{1}{2}"),
        ("\\boxed{1} or rather \\boxed{ 2 }", "boxed", "2"),  # the last box, stripped
        ("\\boxed{\\{1, 2\\}}", "boxed", "\\{1, 2\\}"),  # escaped braces inside still balance
    ],
)
def test_extract_reference_answer(text, answer_format, expected):
    assert extract_reference_answer(text, answer_format, "d.jsonl:1", "answer") == expected


# id -> (rows, settings, parts the message must contain)
BAD_ROWS = {
    "gsm8k without ####": ([ROWS[0], {"question": "q", "answer": "just 7"}], {"answer_format": "gsm8k"},
                           ["row 2", "field 'answer' has no '#### <answer>' line"]),
    "boxed without box": ([{"question": "q", "answer": "\\boxed{1"}], {"answer_format": "boxed"},
                          ["row 1", "field 'answer' has no complete \\boxed{...}"]),
    "missing prompt": ([ROWS[0], ROWS[1], {"answer": "#### 1"}], {"answer_format": "gsm8k"},
                       ["row 3", "missing field 'question'"]),
    "countdown without target": ([{"question": "q", "numbers": [1, 2]}], {"reward": "countdown"},
                                 ["row 1", "field 'target' is None", "needed by the countdown reward"]),
    "code without tests": ([{"question": "q", "answer": ""}], {"reward": "code"},
                           ["row 1", "no tests: give field 'tests'", "needed by the code reward"]),
    "code with bad tests": ([{"question": "q", "tests": [{"input": "1"}]}], {"reward": "code"},
                            ["row 1", "field 'tests', item 1"]),
}


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_malformed_rows_name_file_row_and_field(tmp_path, kind, case):
    rows, settings, parts = BAD_ROWS[case]
    path = write(tmp_path, kind, rows)
    with pytest.raises(DataError) as error:
        load_examples(path, prompt_field="question", **settings)
    message = str(error.value)
    assert str(path) in message
    for part in parts:
        part = part.replace("row ", ":" if kind == "jsonl" else "row ")  # JSONL says file:line
        assert part in message, message


def test_unknown_answer_format_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="answer_format 'latex' is not one of plain, gsm8k, boxed"):
        load_examples(write(tmp_path, "jsonl"), answer_format="latex")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="broken.parquet: cannot be read as PARQUET"):
        load_examples(broken)
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        load_examples(tmp_path)  # a folder without a saved dataset


def test_a_countdown_dataset_trains_with_the_countdown_checker(tmp_path):
    rows = [{"prompt": f"Reach {n + 3} with [1, 2, {n}]", "numbers": [1, 2, n], "target": n + 3} for n in range(10)]
    path = write(tmp_path, "parquet", rows)
    source = load_problems("sums", str(path), None, eval_problems=2, seed=0, dataset_reward="countdown")
    assert source.accuracy_reward == "countdown" and len(source.held_out) == 2
    assert all(e.answer == "" and e.metadata["target"] == e.metadata["numbers"][2] + 3 for e in source.held_out)
