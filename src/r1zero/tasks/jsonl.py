"""Users' own problems from a JSONL file: one JSON object per line, with a question and its answer.

    {"prompt": "What is 3 + 5?", "answer": "8"}
    {"prompt": "Simplify 2/4.", "answer": "\\\\frac{1}{2}", "source": "worksheet 3"}

    examples = load_jsonl_examples("data.jsonl")                                  # ids "data.jsonl:1", ...
    examples = load_jsonl_examples("gsm8k.jsonl", prompt_field="question")        # other field names

Every error names the file and the 1-based row, says what is wrong and what would be valid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from r1zero.example import Example

_UTF8_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """A data file that cannot be loaded; the message names the file, the row and the fix."""


def load_jsonl_examples(
    path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer"
) -> list[Example]:
    """The examples of a JSONL file, in file order.

    Each non-blank line is a JSON object with a prompt_field and an answer_field, each a non-empty
    string or a number (numbers become text: 8 -> "8", 0.5 -> "0.5", 17.0 -> "17.0"). Both are
    stripped of surrounding whitespace. Every other field goes into Example.metadata. The id is
    "<file name>:<line number>", 1-based, counting blank lines, so it points at the line in an
    editor. Blank lines are skipped; a UTF-8 byte order mark at the start is allowed.

    >>> load_jsonl_examples("data.jsonl")[0]  # doctest: +SKIP
    Example(id='data.jsonl:1', prompt='What is 3 + 5?', answer='8', metadata={})
    """
    path = Path(path)
    examples = [example_from_record(record, f"{path}:{row}", f"{path.name}:{row}", prompt_field, answer_field)
                for row, record in iter_jsonl_records(path)]
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty or only blank lines); add one JSON object per line")
    return examples


def iter_jsonl_records(path: str | Path):
    """(1-based line number, JSON object) for each non-blank line; DataError naming the file and line for a line
    that is not UTF-8, not JSON, or not an object."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; give the path of a JSONL file (one JSON object per line)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory; give the path of a JSONL file (one JSON object per line)") from None
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]

    for row, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{row}"  # "file:row", as editors and compilers print it
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                f"{where}: bytes that are not UTF-8 at byte {error.start + 1} of the row ({error.reason}); "
                "save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{where}: not valid JSON ({error.msg} at column {error.colno}); "
                'each line must be one JSON object, e.g. {"prompt": "What is 3 + 5?", "answer": "8"}'
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{where}: a JSON {_json_type_name(record)} where a JSON object was expected; "
                'each line must be one JSON object, e.g. {"prompt": "What is 3 + 5?", "answer": "8"}'
            )
        yield row, record


def example_from_record(record: dict, where: str, example_id: str, prompt_field: str = "prompt",
                        answer_field: str = "answer", answer_required: bool = True) -> Example:
    """One row as an Example: prompt_field and answer_field as stripped non-empty text (the answer may be absent
    or empty when not answer_required), every other field in metadata. `where` ("file:row") starts every
    error."""
    prompt = _text_field(record, prompt_field, where)
    if answer_required or record.get(answer_field) not in (None, ""):
        answer = _text_field(record, answer_field, where)
    else:
        answer = ""
    metadata = {key: value for key, value in record.items() if key not in (prompt_field, answer_field)}
    return Example(id=example_id, prompt=prompt, answer=answer, metadata=metadata)


def _text_field(record: dict, field: str, where: str) -> str:
    """record[field] as stripped, non-empty text; DataError naming the field otherwise."""
    if field not in record:
        present = ", ".join(repr(key) for key in record) or "none"
        raise DataError(
            f"{where}: missing field {field!r}; the row has fields: {present} "
            "(choose the field names with prompt_field and answer_field)"
        )
    value = record[field]
    # bool is a subclass of int, but true/false is no question or answer.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and not math.isfinite(value):
        raise DataError(f"{where}: field {field!r} is {value}; it must be a finite number or a non-empty string")
    if not (isinstance(value, str) or is_number):
        raise DataError(
            f"{where}: field {field!r} is a JSON {_json_type_name(value)}; it must be a non-empty string or a number"
        )
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: field {field!r} is empty; it must be a non-empty string or a number")
    return text


def _json_type_name(value) -> str:
    """The JSON name of a value json.loads returned: "null", "array", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "number"
