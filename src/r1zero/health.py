"""Training-health alerts and the paper's "aha" signal, computed from logged metrics and completions.

    monitor = HealthMonitor()
    for step, metrics in history:
        for alert in monitor.update(step, metrics):
            print(alert.name, alert.message)

Pure detection: no I/O, no model. `update` takes one metrics record as the trainer logs it (keys as in
metrics.jsonl: "entropy", "kl", "zero_std_fraction", "reward/<name>", ...; non-finite values may be floats
or the strings "nan"/"inf" that metrics.jsonl holds). A check whose metric is missing from a record (an
eval-only record, a run without a format reward) keeps its state. An alert fires once, on the step its
condition starts to hold (after `patience` steps for the sustained ones), and again only after the
condition has clearly cleared: for the one-record checks a margin (hysteresis: entropy back above twice the
floor, KL below half its limit), so a value hovering at a threshold alerts once, not at every crossing. A trainer that records alerts logs them as {"alerts": [alert._asdict(), ...]},
the form `r1zero report` reads.
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import NamedTuple

from r1zero import metric_names as names

# Words of self-reflection whose rise marks the "aha moment" (DeepSeek-R1 paper, section 2.2.4: the model
# "learns to rethink", re-evaluating its initial approach; Table 3 shows "Wait, wait. Wait.").
REFLECTION_WORDS = ("wait", "check", "verify", "again", "recheck", "however")


def think_part(completion: str) -> str:
    """The text after "<think>" up to "</think>" (or up to "<answer>", or the end, when not closed); "" when
    there is no "<think>".

    >>> think_part("<think> 2 + 2 = 4 </think> <answer> 4 </answer>")
    ' 2 + 2 = 4 '
    """
    start = completion.find("<think>")
    if start < 0:
        return ""
    start += len("<think>")
    ends = [end for end in (completion.find("</think>", start), completion.find("<answer>", start)) if end >= 0]
    return completion[start:min(ends, default=len(completion))]


def reflection_rate(completions: list[str], words: tuple[str, ...] = REFLECTION_WORDS) -> float:
    """Share of completions whose <think> part (`think_part`) holds any of `words` as a whole word,
    case-insensitive; 0.0 for no completions. "Wait," counts for "wait"; "waiting" and "rechecked" do not.

    >>> reflection_rate(["<think> 5. Wait, 6 </think>", "<think> 6 </think> <answer> wait </answer>"])
    0.5
    """
    if not completions:
        return 0.0
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(word) for word in words) + r")\b", re.IGNORECASE)
    return sum(bool(pattern.search(think_part(text))) for text in completions) / len(completions)


class Alert(NamedTuple):
    """One health problem: which check (`name`, one of HealthMonitor.NAMES), the step it started, and a
    message giving the values seen, the likely cause and what to try."""

    name: str
    step: int
    message: str


def metric_number(value) -> float | None:
    """A float from a value of metrics.jsonl (numbers, or the "nan"/"inf" strings non-finite values are
    written as); None for anything else (booleans, text, lists).

    >>> metric_number(3), metric_number("-inf"), metric_number("cpu")
    (3.0, -inf, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(value)
    return None


class Check(NamedTuple):
    """One check's reading of a record."""

    holds: bool  # the condition holds at this record
    patience: int  # records in a row it must hold before it alerts
    message: str
    cleared: bool | None = None  # a fired alert re-arms once this holds (hysteresis); None: once `holds` is False


class HealthMonitor:
    """Watches the metrics history for the usual ways R1-Zero-style training goes wrong.

    Checks (name: condition):
    entropy_collapse:   entropy < entropy_floor, after having been >= entropy_floor
    no_learning_signal: zero_std_fraction > zero_std_limit for `patience` steps in a row
    zero_rewards:       every reward/* value is 0 for `patience` steps in a row
    truncation:         response/truncated_fraction > truncated_limit for `patience` steps in a row
    format_stuck:       reward/format == 0 for `format_patience` steps in a row
    kl_explosion:       kl > kl_limit, or kl > max(kl_growth_floor, kl_growth x the kl `patience` records
                        earlier)
    non_finite_loss:    loss is NaN or infinite, or skipped_updates > 0 (the trainer skips non-finite steps)
    """

    NAMES = ("entropy_collapse", "no_learning_signal", "zero_rewards", "truncation", "format_stuck",
             "kl_explosion", "non_finite_loss")

    def __init__(self, entropy_floor: float = 0.05, zero_std_limit: float = 0.9, truncated_limit: float = 0.5,
                 kl_limit: float = 1.0, kl_growth: float = 10.0, kl_growth_floor: float = 0.1, patience: int = 5,
                 format_patience: int = 20, entropy_clear: float = 2.0):
        """
        entropy_floor:   mean per-token entropy (nats) below which sampling is nearly deterministic. 0.05
                         nats is a token whose top choice has about 99% of the mass.
        zero_std_limit:  share of groups whose samples all got the same reward above which the batch carries
                         almost no GRPO signal (those groups have zero advantage). 0.9.
        truncated_limit: share of responses cut at max_new_tokens that counts as "hitting the limit". 0.5.
        kl_limit:        KL to the reference (per token) above which the policy has run away. 1.0 nats.
        kl_growth:       factor of KL growth over `patience` records that counts as exploding. 10.
        kl_growth_floor: KL below which growth is ignored (early KL rises from 0 by large factors). 0.1.
        patience:        records a sustained condition must hold before it alerts. 5.
        format_patience: records reward/format may stay at 0 before it alerts; longer than `patience` because
                         a base model can take a while to find the format. 20.
        entropy_clear:   an entropy_collapse alert re-arms only once entropy is back above entropy_clear x
                         entropy_floor: an entropy hovering around the floor (a healthy run converging on a task
                         with one right answer) alerts once, not at each crossing. 2.
        """
        if patience < 1 or format_patience < 1:
            raise ValueError(f"patience and format_patience count records and must be >= 1, got {patience} and "
                             f"{format_patience}")
        self.entropy_floor, self.zero_std_limit, self.truncated_limit = entropy_floor, zero_std_limit, truncated_limit
        self.entropy_clear = entropy_clear
        self.kl_limit, self.kl_growth, self.kl_growth_floor = kl_limit, kl_growth, kl_growth_floor
        self.patience, self.format_patience = patience, format_patience
        self.streaks = dict.fromkeys(self.NAMES, 0)  # records in a row the condition has held
        self.active: set[str] = set()  # checks that have alerted and not cleared since
        self.peak_entropy = -math.inf
        self.kl_history: deque[float] = deque(maxlen=patience)

    def state_dict(self) -> dict:
        """What the monitor remembers of the history (for checkpoints); the thresholds are settings."""
        return {"streaks": dict(self.streaks), "active": sorted(self.active), "peak_entropy": self.peak_entropy,
                "kl_history": list(self.kl_history)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`: later updates give the alerts the saved monitor would have given."""
        self.streaks = dict.fromkeys(self.NAMES, 0) | dict(state["streaks"])
        self.active = set(state["active"])
        self.peak_entropy = float(state["peak_entropy"])
        self.kl_history = deque(state["kl_history"], maxlen=self.patience)

    def update(self, step: int, metrics: dict) -> list[Alert]:
        """Feed one metrics record; returns the alerts that start at this step (usually none)."""
        values = {key: number for key, value in metrics.items() if (number := metric_number(value)) is not None}
        alerts = []
        for name, check in self._checks(values).items():
            self.streaks[name] = self.streaks[name] + 1 if check.holds else 0
            if name in self.active:  # fired already: silent until the condition has clearly cleared
                if (not check.holds) if check.cleared is None else check.cleared:
                    self.active.discard(name)
            elif self.streaks[name] >= check.patience:
                self.active.add(name)
                alerts.append(Alert(name, step, check.message))
        return alerts

    def _checks(self, values: dict[str, float]) -> dict[str, "Check"]:
        """name -> Check for the checks this record informs."""
        checks = {}
        patience = self.patience
        if names.ENTROPY in values:
            entropy = values[names.ENTROPY]
            checks["entropy_collapse"] = Check(
                entropy < self.entropy_floor <= self.peak_entropy, 1,
                f"entropy fell to {entropy:.3g} nats (peak {self.peak_entropy:.3g}): sampling is nearly "
                f"deterministic, so the samples of a group stop differing. Expected when the task has one right "
                f"answer and one way to write it and held-out accuracy is still rising (eval/pass@1): a confident "
                f"policy is what success looks like there. A problem when accuracy has stalled: likely a learning "
                f"rate too high for the model, or a clip range that lets probable tokens grow fastest; try a lower "
                f"learning_rate, clip_high 0.28 (DAPO's clip-higher), or a higher temperature. (Said once; again "
                f"only after entropy has been back above {self.entropy_clear * self.entropy_floor:.3g}.)",
                cleared=entropy >= self.entropy_clear * self.entropy_floor)
            self.peak_entropy = max(self.peak_entropy, entropy)
        if names.ZERO_STD_FRACTION in values:
            checks["no_learning_signal"] = Check(
                values[names.ZERO_STD_FRACTION] > self.zero_std_limit, patience,
                f"zero_std_fraction above {self.zero_std_limit} for {patience} steps: in most groups every "
                f"sample got the same reward, so their advantages are 0 and there is no learning signal. Likely "
                f"cause: problems all too hard (or all too easy) for the model. Try problems of matching "
                f"difficulty, a larger group_size, or a reward with partial credit (e.g. format).")
        rewards = [value for key, value in values.items() if key.startswith(names.REWARD_PREFIX)]
        if rewards:
            checks["zero_rewards"] = Check(
                all(value == 0 for value in rewards), patience,
                f"every reward was 0 for {patience} steps: no sample earns anything, so there is nothing to "
                f"reinforce. Likely cause: the answers never match the checker (wrong answer_field, answers "
                f"outside <answer> tags, template not suited to the model) or the task is far too hard. Try "
                f"`r1zero eval` on a few problems and read the samples, a format reward, or an easier task.")
        if names.TRUNCATED_FRACTION in values:
            truncated = values[names.TRUNCATED_FRACTION]
            checks["truncation"] = Check(
                truncated > self.truncated_limit, patience,
                f"{truncated:.0%} of responses hit max_new_tokens for {patience} steps: they are cut before "
                f"</answer> and lose the format and accuracy rewards. Likely cause: reasoning grew longer than the "
                f"limit. Try a larger max_new_tokens.")
        if names.REWARD_FORMAT in values:
            checks["format_stuck"] = Check(
                values[names.REWARD_FORMAT] == 0, self.format_patience,
                f"reward/format stayed 0 for {self.format_patience} steps: no completion has the <think> ... "
                f"</think> <answer> ... </answer> layout. Likely cause: a template the model does not follow "
                f"(template chat for instruct models, r1_zero for base models), or truncated responses. Try the "
                f"other template, a larger max_new_tokens, or a higher format weight in reward_weights.")
        if names.KL in values:
            kl = values[names.KL]
            earlier = self.kl_history[0] if len(self.kl_history) == patience else math.inf
            earlier_text = f"{earlier:.3g}" if math.isfinite(earlier) else "not yet logged"
            checks["kl_explosion"] = Check(
                kl > self.kl_limit or kl > max(self.kl_growth_floor, self.kl_growth * earlier), 1,
                f"kl to the reference is {kl:.3g} (limit {self.kl_limit}; {patience} records earlier: "
                f"{earlier_text}): the policy is running away from the reference, often just before rewards "
                f"collapse. Likely cause: a learning rate too high, or too many updates_per_batch. Try a lower "
                f"learning_rate, a larger kl_coef, or max_grad_norm 1.0.",
                cleared=kl <= self.kl_limit / 2 and kl <= max(self.kl_growth_floor, self.kl_growth * earlier) / 2)
            self.kl_history.append(kl)
        if names.LOSS in values or names.SKIPPED_UPDATES in values:
            loss, skipped = values.get(names.LOSS, 0.0), values.get(names.SKIPPED_UPDATES, 0.0)
            checks["non_finite_loss"] = Check(
                not math.isfinite(loss) or skipped > 0, 1,
                f"non-finite loss or gradient (loss {loss}, {skipped:.0f} updates skipped): those updates "
                f"never reached the weights. Likely cause: float16 overflow, a learning rate too high, or "
                f"log-probabilities of -inf. Try dtype bfloat16 or float32, a lower learning_rate, max_grad_norm "
                f"1.0.")
        return checks
