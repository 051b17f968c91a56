"""Users' problems from JSONL, Parquet, CSV or a `datasets` folder (save_to_disk), with answer extraction.

    examples = load_examples("gsm8k_train.parquet", prompt_field="question", answer_format="gsm8k")
    examples = load_examples("math_saved/train", prompt_field="problem", answer_field="solution",
                             answer_format="boxed")
    examples = load_examples("countdown.jsonl", reward="countdown")      # rows need numbers and target

Formats, chosen by the path: a folder is a dataset saved with `datasets.Dataset.save_to_disk` (for a DatasetDict,
give the folder of one split, e.g. data/train); `.parquet` and `.csv` are read with the `datasets` library;
anything else is read as JSONL (one JSON object per line; r1zero.tasks.jsonl). Answer formats:
  plain   the answer field is the final answer ("42", "\\frac{1}{2}")
  gsm8k   the text after the last "####" in the field (GSM8K: "...reasoning...\\n#### 42"), commas removed
  boxed   the content of the last \\boxed{...} in the field (MATH: a worked solution ending in \\boxed{...})
Each row is then checked for what the reward needs (math and integer: an answer; countdown: numbers and target;
code: tests and/or asserts). Every malformed row is a DataError naming the file, the row and the field, raised
before any model is loaded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from r1zero.example import Example
from r1zero.tasks.jsonl import DataError, example_from_record, iter_jsonl_records

ANSWER_FORMATS = ("plain", "gsm8k", "boxed")
DATASET_REWARDS = ("math", "integer", "countdown", "code")
_ANSWER_OPTIONAL = ("countdown", "code")  # checkers that read metadata, not the answer


def load_examples(path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer",
                  answer_format: str = "plain", reward: str = "math") -> list[Example]:
    """The examples of a data file or saved dataset folder, in order, checked for `reward`.

    Ids are "<file name>:<line>" for JSONL and "<name>:<row>" (1-based) for the other formats.
    """
    from r1zero.rewards import EXAMPLE_CHECKS

    if answer_format not in ANSWER_FORMATS:
        raise DataError(f"answer_format '{answer_format}' is not one of {', '.join(ANSWER_FORMATS)}")
    if reward not in DATASET_REWARDS:
        raise DataError(f"dataset reward '{reward}' is not one of {', '.join(DATASET_REWARDS)}")
    path = Path(path)
    answer_required = reward not in _ANSWER_OPTIONAL
    examples = []
    for where, example_id, record in _records(path):
        example = example_from_record(record, where, example_id, prompt_field, answer_field, answer_required)
        if example.answer:
            example = Example(example.id, example.prompt,
                              extract_reference_answer(example.answer, answer_format, where, answer_field),
                              example.metadata)
        problem = EXAMPLE_CHECKS[reward](example)
        if problem is not None:
            raise DataError(f"{where}: {problem} (needed by the {reward} reward)")
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no examples; the file or dataset is empty")
    return examples


def extract_reference_answer(text: str, answer_format: str, where: str, field: str) -> str:
    """The final answer inside an answer field written in `answer_format`; DataError naming where and field.

    >>> extract_reference_answer("3 + 5 = 8\\n#### 8", "gsm8k", "d.jsonl:1", "answer")
    '8'
    >>> extract_reference_answer("so $x = \\\\boxed{\\\\frac{1}{2}}$", "boxed", "d.jsonl:1", "solution")
    '\\\\frac{1}{2}'
    """
    if answer_format == "plain":
        return text
    if answer_format == "gsm8k":
        before, marker, after = text.rpartition("####")
        answer = after.strip().replace(",", "")
        if not marker or not answer:
            raise DataError(f"{where}: field '{field}' has no '#### <answer>' line (answer_format gsm8k); the final "
                            f"answer must follow '####', as in GSM8K's '...\\n#### 42'")
        return answer
    from r1zero.rewards.math import last_boxed_content

    answer = last_boxed_content(text)
    if answer is None or not answer.strip():
        raise DataError(f"{where}: field '{field}' has no complete \\boxed{{...}} (answer_format boxed); the final "
                        f"answer must be in \\boxed{{...}}, as in MATH solutions")
    return answer.strip()


def _records(path: Path) -> Iterator[tuple[str, str, dict]]:
    """(where, example id, row as a dict) for every row of a JSONL file, Parquet or CSV file, or saved dataset."""
    if path.is_dir():
        yield from _dataset_records(path, _load_saved_dataset(path), header_line=False)
    elif path.suffix.lower() in (".parquet", ".csv"):
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        yield from _dataset_records(path, _load_with_datasets(path), header_line=path.suffix.lower() == ".csv")
    else:
        for row, record in iter_jsonl_records(path):
            yield f"{path}:{row}", f"{path.name}:{row}", record


def _dataset_records(path: Path, dataset, header_line: bool) -> Iterator[tuple[str, str, dict]]:
    for index, record in enumerate(dataset, start=1):
        where = f"{path}: row {index}" + (f" (line {index + 1})" if header_line else "")
        # Columnar formats have every column in every row; a missing value (None) means the field is absent.
        yield where, f"{path.name}:{index}", {key: value for key, value in record.items() if value is not None}


def _datasets_module(path: Path):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading Parquet, CSV and saved datasets needs the `datasets` library: "
                        f"pip install datasets") from None
    return datasets


def _load_with_datasets(path: Path):
    datasets = _datasets_module(path)
    kind = path.suffix.lower().lstrip(".")
    with tempfile.TemporaryDirectory(prefix="r1zero-data-") as cache:  # no files left in the HF cache
        try:
            if kind == "parquet":
                return datasets.Dataset.from_parquet(str(path), cache_dir=cache, keep_in_memory=True)
            return datasets.Dataset.from_csv(str(path), cache_dir=cache, keep_in_memory=True)
        except Exception as error:  # pyarrow and pandas raise many types for a broken file
            raise DataError(f"{path}: cannot be read as {kind.upper()} ({type(error).__name__}: "
                            f"{str(error)[:200]})") from None


def _load_saved_dataset(path: Path):
    datasets = _datasets_module(path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DataError(f"{path}: a folder, but not a dataset saved with save_to_disk ({type(error).__name__}: "
                        f"{str(error)[:200]}); give a JSONL, Parquet or CSV file or such a folder") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(loaded)
        first = next(iter(loaded), "train")
        raise DataError(f"{path}: a DatasetDict with splits {splits}; give the folder of one split, e.g. "
                        f"{path / first}")
    return loaded
