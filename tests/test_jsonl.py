"""Tests of r1zero.tasks.jsonl: loading users' problems, and the error each bad file gets."""

import pytest

from r1zero.example import Example
from r1zero.tasks.jsonl import DataError, load_jsonl_examples


def write(tmp_path, content: str | bytes, name: str = "data.jsonl"):
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_good_file_round_trips(tmp_path):
    path = write(
        tmp_path,
        '{"prompt": "What is 3 + 5?", "answer": "8"}\n'
        "\n"  # blank lines are skipped but still counted: the next row is line 3
        '{"prompt": "  Simplify 2/4.  ", "answer": "\\\\frac{1}{2}", "source": "sheet 3", "level": 2}\r\n'
        '{"prompt": "What is 9 + 8?", "answer": 17, "id": "mine"}\n'
        '{"prompt": "Half of one?", "answer": 0.5, "tags": ["easy"], "extra": null}\n'
        "   \n",
    )
    assert load_jsonl_examples(path) == [
        Example(id="data.jsonl:1", prompt="What is 3 + 5?", answer="8", metadata={}),
        Example(
            id="data.jsonl:3",
            prompt="Simplify 2/4.",
            answer="\\frac{1}{2}",
            metadata={"source": "sheet 3", "level": 2},
        ),
        Example(id="data.jsonl:4", prompt="What is 9 + 8?", answer="17", metadata={"id": "mine"}),
        Example(id="data.jsonl:5", prompt="Half of one?", answer="0.5", metadata={"tags": ["easy"], "extra": None}),
    ]


def test_other_field_names_and_byte_order_mark(tmp_path):
    row = '{"question": "Q?", "solution": "42", "prompt": "kept"}'
    path = write(tmp_path, b"\xef\xbb\xbf" + row.encode(), "gsm.jsonl")
    assert load_jsonl_examples(str(path), prompt_field="question", answer_field="solution") == [
        Example(id="gsm.jsonl:1", prompt="Q?", answer="42", metadata={"prompt": "kept"})
    ]


GOOD = '{"prompt": "What is 3 + 5?", "answer": "8"}\n'

# id -> (file content, the parts the message must contain besides the file name: row, field, fix)
ERROR_CASES = {
    "latin-1 byte": (
        GOOD.encode() + b'{"prompt": "caf\xe9", "answer": "1"}\n',
        [":2:", "not UTF-8", "byte 16"],  # 1-based, like JSON columns
    ),
    "bad json": (GOOD + GOOD + '{"prompt": "x", "answer": }\n', [":3:", "not valid JSON", "Expecting value"]),
    "missing comma": (GOOD + '{"prompt": "x" "answer": "1"}\n', [":2:", "Expecting ',' delimiter", "column 16"]),
    "row is an array": ('["What is 3 + 5?", "8"]\n', [":1:", "JSON array", "JSON object"]),
    "row is a string": ('"What is 3 + 5?"\n', [":1:", "JSON string", "JSON object"]),
    "missing prompt": (
        GOOD + '{"question": "x", "answer": "1"}\n',
        [":2:", "missing field 'prompt'", "has fields: 'question', 'answer'", "prompt_field"],
    ),
    "missing answer": (
        GOOD + '{"prompt": "x", "solution": "1"}\n',
        [":2:", "missing field 'answer'", "has fields: 'prompt', 'solution'"],
    ),
    "empty object": ("{}\n", [":1:", "missing field 'prompt'", "has fields: none"]),
    "empty prompt": (GOOD + '{"prompt": "", "answer": "1"}\n', [":2:", "field 'prompt' is empty"]),
    "blank answer": (GOOD + '{"prompt": "x", "answer": "  "}\n', [":2:", "field 'answer' is empty"]),
    "null answer": (
        GOOD + '{"prompt": "x", "answer": null}\n',
        [":2:", "field 'answer' is a JSON null", "non-empty string or a number"],
    ),
    "bool answer": (GOOD + '{"prompt": "x", "answer": true}\n', [":2:", "field 'answer' is a JSON boolean"]),
    "list prompt": (GOOD + '{"prompt": ["x"], "answer": "1"}\n', [":2:", "field 'prompt' is a JSON array"]),
    "dict prompt": (GOOD + '{"prompt": {"q": 1}, "answer": "1"}\n', [":2:", "field 'prompt' is a JSON object"]),
    "nan answer": (GOOD + '{"prompt": "x", "answer": NaN}\n', [":2:", "field 'answer' is nan", "finite number"]),
    "empty file": ("", ["no examples"]),
    "only blank lines": ("\n  \n\n", ["no examples", "blank lines"]),
}


@pytest.mark.parametrize("content, message_parts", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors_name_file_row_and_field(tmp_path, content, message_parts):
    path = write(tmp_path, content)
    with pytest.raises(DataError) as error:
        load_jsonl_examples(path)
    message = str(error.value)
    assert "data.jsonl" in message
    for part in message_parts:
        assert part in message, message


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.jsonl: file not found"):
        load_jsonl_examples(tmp_path / "nothere.jsonl")


def test_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_jsonl_examples(tmp_path)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
