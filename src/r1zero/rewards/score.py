"""A reward value that can say why: `Score`, and `as_score`, which turns whatever a reward returned into one.

    Score(0.0, "no answer tag", PARSE_FAILURE)      # a float equal to 0.0, with .reason and .failure
    as_score((0.5, "tests failed 1/2"))              # a reward may also return a (value, reason) pair
    as_score(1.0)                                    # or a plain float (reason "")

`Score` is a float, so code that compares or adds rewards (`reward(...) == 1.0`) needs no change. `failure` sorts a
zero into the reward-health counters the trainer logs per step (`reward_health/<component>/<counter>`): a
timeout, a parse failure (no answer tag, an answer that cannot be read) or an exception. A plain wrong answer has
no failure kind.
"""

from __future__ import annotations

import math

TIMEOUT = "timeout"
PARSE_FAILURE = "parse_failure"
EXCEPTION = "exception"
# failure kind -> the name of its per-step counter
HEALTH_COUNTERS = {TIMEOUT: "timeouts", PARSE_FAILURE: "parse_failures", EXCEPTION: "exceptions"}


class Score(float):
    """A reward value (a float) with `reason` (short text for people) and `failure` (None or a HEALTH_COUNTERS key).

    >>> score = Score(0.0, "no answer tag", PARSE_FAILURE)
    >>> score == 0.0, score.reason, score.failure
    (True, 'no answer tag', 'parse_failure')
    """

    def __new__(cls, value: float, reason: str = "", failure: str | None = None):
        if failure is not None and failure not in HEALTH_COUNTERS:
            raise ValueError(f"unknown failure kind {failure!r}; valid: {', '.join(HEALTH_COUNTERS)} or None")
        score = super().__new__(cls, value)
        score.reason = reason
        score.failure = failure
        return score

    def __reduce__(self):  # pickles with its reason (sent between processes by the scoring pool)
        return Score, (float(self), self.reason, self.failure)

    def __repr__(self) -> str:
        return f"Score({float(self)!r}, {self.reason!r}" + (f", {self.failure!r})" if self.failure else ")")


def as_score(value) -> Score:
    """A reward's return value as a Score: a Score as is, a float (or int, bool), or a (float, reason) pair.

    Raises TypeError for anything else and ValueError for NaN or infinity (a reward that is not a finite number
    would poison the advantages), naming what came back.

    >>> as_score((0.5, "tests failed 1/2"))
    Score(0.5, 'tests failed 1/2')
    """
    if isinstance(value, Score):
        score = value
    elif isinstance(value, (int, float)):  # bool is an int
        score = Score(float(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], (int, float)) \
            and isinstance(value[1], str):
        score = Score(float(value[0]), value[1])
    else:
        raise TypeError(f"a reward returned {type(value).__name__} {value!r:.80}; return a float or a "
                        f"(float, reason) pair")
    if not math.isfinite(score):
        raise ValueError(f"a reward returned {float(score)}; rewards must be finite numbers")
    return score
