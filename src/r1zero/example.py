"""One problem to train or evaluate on, shared by tasks (which make them) and rewards (which check them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """A problem: the question shown to the model and the reference the rewards check against.

    id:       stable identifier, unique within its split (e.g. "sums-test-17" or "data.jsonl:42").
    prompt:   the question only; the template (r1zero.templates) wraps it.
    answer:   the reference final answer as text ("17", "\\frac{1}{2}").
    metadata: anything else a reward may need (test cases for code, numbers for countdown).
    """

    id: str
    prompt: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)
