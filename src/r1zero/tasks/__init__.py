"""Where problems come from: built-in tasks (generated) or a user's JSONL file.

A `ProblemSource` yields training batches and a fixed held-out list, and names the accuracy reward that
checks its answers. The trainer sees only this interface.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from r1zero.example import Example
from r1zero.tasks import sums
from r1zero.tasks.jsonl import DataError, load_jsonl_examples

TASKS = {sums.NAME: sums}


@dataclass
class ProblemSource:
    """Training problems in a deterministic order plus a held-out set that training never sees."""

    name: str
    accuracy_reward: str
    held_out: list[Example]
    train_examples: list[Example] | None = None  # a finite dataset; None for a generated task
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


def load_problems(task: str, dataset: str | None, eval_dataset: str | None, eval_problems: int, seed: int,
                  prompt_field: str = "prompt", answer_field: str = "answer") -> ProblemSource:
    rng = random.Random(seed)
    if dataset is None:
        module = TASKS[task]
        return ProblemSource(task, module.ACCURACY_REWARD, module.held_out(eval_problems), generated_task=module,
                             rng=rng)
    examples = load_jsonl_examples(dataset, prompt_field, answer_field)
    if eval_dataset is not None:
        held_out = load_jsonl_examples(eval_dataset, prompt_field, answer_field)[:eval_problems]
        train = examples
    else:
        count = min(eval_problems, len(examples) // 5)
        if count == 0 or len(examples) - count == 0:
            raise DataError(f"{dataset}: {len(examples)} rows are too few to hold out an evaluation set; give "
                            f"eval_dataset or at least 5 rows")
        shuffled = examples[:]
        random.Random(0).shuffle(shuffled)  # the split depends on the data only, not on the run's seed
        held_out, train = shuffled[:count], shuffled[count:]
    return ProblemSource(Path(dataset).name, "math", held_out, train_examples=train, rng=rng)
