"""Where problems come from: built-in tasks (generated) or a user's data (JSONL, Parquet, CSV, saved dataset).

A `ProblemSource` yields training batches and a fixed held-out list, and names the accuracy reward that
checks its answers. The trainer sees only this interface.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from r1zero.example import Example
from r1zero.tasks import code, countdown, pair_sums, sums
from r1zero.tasks.data import load_examples
from r1zero.tasks.jsonl import DataError

TASKS = {sums.NAME: sums, countdown.NAME: countdown, code.NAME: code, pair_sums.NAME: pair_sums}


@dataclass
class ProblemSource:
    """Training problems in a deterministic order plus a held-out set that training never sees."""

    name: str
    accuracy_reward: str
    held_out: list[Example]
    train_examples: list[Example] | None = None  # a finite dataset; None for a generated task
    out_of_distribution: list[Example] = field(default_factory=list)  # a harder split, never trained on (sums)
    generated_task: object = None  # a module with sample_train(rng, count)
    rng: random.Random = field(default_factory=random.Random)
    _order: list[int] = field(default_factory=list)

    def next_batch(self, count: int) -> list[Example]:
        if self.generated_task is not None:
            return self.generated_task.sample_train(self.rng, count)
        batch = []
        while len(batch) < count:  # epochs of shuffled rows
            if not self._order:
                self._order = list(range(len(self.train_examples)))
                self.rng.shuffle(self._order)
            batch.append(self.train_examples[self._order.pop()])
        return batch

    def state_dict(self) -> dict:
        """The data position: the random.Random's state and what is left of the current epoch's order."""
        return {"rng": self.rng.getstate(), "order": list(self._order)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`: the next batches are those the saved source would have given."""
        self.rng.setstate(state["rng"])
        self._order = list(state["order"])


def load_problems(task: str, dataset: str | None, eval_dataset: str | None, eval_problems: int, seed: int,
                  prompt_field: str = "prompt", answer_field: str = "answer", answer_format: str = "plain",
                  dataset_reward: str = "math") -> ProblemSource:
    """A built-in task, or a dataset (r1zero.tasks.data.load_examples: every row checked for dataset_reward)."""
    rng = random.Random(seed)
    if dataset is None:
        module = TASKS[task]
        harder = module.out_of_distribution(eval_problems) if hasattr(module, "out_of_distribution") else []
        return ProblemSource(task, module.ACCURACY_REWARD, module.held_out(eval_problems), generated_task=module,
                             out_of_distribution=harder, rng=rng)
    examples = load_examples(dataset, prompt_field, answer_field, answer_format, dataset_reward)
    if eval_dataset is not None:
        held_out = load_examples(eval_dataset, prompt_field, answer_field, answer_format, dataset_reward)
        held_out = held_out[:eval_problems]
        train = examples
    else:
        count = min(eval_problems, len(examples) // 5)
        if count == 0 or len(examples) - count == 0:
            raise DataError(f"{dataset}: {len(examples)} rows are too few to hold out an evaluation set; give "
                            f"eval_dataset or at least 5 rows")
        shuffled = examples[:]
        random.Random(0).shuffle(shuffled)  # the split depends on the data only, not on the run's seed
        held_out, train = shuffled[:count], shuffled[count:]
    return ProblemSource(Path(dataset).name, dataset_reward, held_out, train_examples=train, rng=rng)
