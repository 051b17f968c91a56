"""Health alerts: metric sequences and the exact alerts (name, step) each must raise; the reflection rate."""

import math

import pytest

from r1zero.health import REFLECTION_WORDS, HealthMonitor, metric_number, reflection_rate, think_part


def _alerts(records, **thresholds):
    """(name, step) of every alert over the records, fed as steps 1, 2, 3, ..."""
    monitor = HealthMonitor(**thresholds)
    return [(a.name, a.step) for step, record in enumerate(records, start=1) for a in monitor.update(step, record)]


HEALTHY = {"entropy": 0.8, "zero_std_fraction": 0.3, "reward/mean": 0.6, "reward/accuracy": 0.4,
           "reward/format": 0.4, "response/truncated_fraction": 0.1, "kl": 0.01, "loss": 0.02, "skipped_updates": 0}


def _with(**changes):
    return HEALTHY | {key.replace("__", "/"): value for key, value in changes.items()}


@pytest.mark.parametrize("records, thresholds, expected", [
    ([HEALTHY] * 30, {}, []),
    # entropy collapse: fires on the first step below 0.05 after having been above; once while it stays low;
    # again after it recovered and fell again
    ([_with(entropy=e) for e in (0.8, 0.3, 0.04, 0.01, 0.2, 0.03)], {}, [("entropy_collapse", 3),
                                                                        ("entropy_collapse", 6)]),
    # ... but not when it was never higher (the model started out deterministic)
    ([_with(entropy=0.01)] * 4, {}, []),
    # no learning signal: zero_std_fraction > 0.9 five steps in a row; four is not enough
    ([_with(zero_std_fraction=0.95)] * 4 + [HEALTHY] + [_with(zero_std_fraction=1.0)] * 6, {},
     [("no_learning_signal", 10)]),
    ([_with(zero_std_fraction=0.95)] * 3, {"zero_std_limit": 0.9, "patience": 3}, [("no_learning_signal", 3)]),
    ([_with(zero_std_fraction=0.9)] * 8, {}, []),  # exactly at the limit is not above it
    # all rewards zero for 5 steps (format stays 0 only 5 < 20 steps: no format alert)
    ([_with(reward__mean=0.0, reward__accuracy=0.0, reward__format=0.0)] * 5, {}, [("zero_rewards", 5)]),
    # accuracy 0 but format earning: not "all zero"
    ([_with(reward__accuracy=0.0)] * 8, {}, []),
    # truncation: above 50% for 5 steps, cleared at step 6, back for 5 more steps from step 7
    ([_with(response__truncated_fraction=0.8)] * 5 + [HEALTHY] + [_with(response__truncated_fraction=0.6)] * 5,
     {}, [("truncation", 5), ("truncation", 11)]),
    # format reward stuck at zero for format_patience steps
    ([_with(reward__format=0.0)] * 20, {}, [("format_stuck", 20)]),
    ([_with(reward__format=0.0)] * 19, {}, []),
    # kl above the absolute limit
    ([_with(kl=0.5), _with(kl=1.5), _with(kl=2.0), _with(kl=0.5)], {}, [("kl_explosion", 2)]),
    # kl growing 10x over 5 records once above 0.1: 0.02 at step 1 -> 0.25 at step 6
    ([_with(kl=k) for k in (0.02, 0.03, 0.05, 0.08, 0.12, 0.25)], {}, [("kl_explosion", 6)]),
    # small kl rising by large factors from ~0 is normal early on
    ([_with(kl=k) for k in (0.0, 0.001, 0.002, 0.004, 0.008, 0.03)], {}, []),
    # non-finite loss, as a float or as the string metrics.jsonl holds; skipped updates count too
    ([_with(loss=float("nan")), _with(loss="nan"), HEALTHY, _with(skipped_updates=2)], {},
     [("non_finite_loss", 1), ("non_finite_loss", 4)]),
    ([_with(loss="inf")], {}, [("non_finite_loss", 1)]),
])
def test_alerts_fire_once_when_a_condition_starts(records, thresholds, expected):
    assert _alerts(records, **thresholds) == expected


def test_an_entropy_hovering_at_the_floor_alerts_once():
    # The default run's pattern: entropy falls from 0.8, then wanders around the 0.05 floor for 80 steps, crossing
    # it again and again (values between 0.03 and 0.07, the run's own range). One alert, at the first crossing;
    # it re-arms only once entropy is back above 2 x 0.05 = 0.1, and then fires again at the next fall.
    import random

    generator = random.Random(0)
    hovering = [0.05 + generator.uniform(-0.02, 0.02) for _ in range(80)]
    crossings = sum(1 for a, b in zip(hovering, hovering[1:]) if a >= 0.05 > b)
    assert crossings >= 15  # without hysteresis each of these would alert again
    series = [0.8, 0.4, 0.2, 0.1, *hovering]
    first = next(step for step, e in enumerate(series, start=1) if e < 0.05)
    assert _alerts([_with(entropy=e) for e in series]) == [("entropy_collapse", first)]
    recovered = series + [0.09, 0.04] + [0.12, 0.04]  # 0.09 is not a clear recovery, 0.12 is
    assert _alerts([_with(entropy=e) for e in recovered]) == [("entropy_collapse", first),
                                                              ("entropy_collapse", len(recovered))]
    monitor = HealthMonitor()
    [alert] = monitor.update(1, {"entropy": 0.8}) + monitor.update(2, {"entropy": 0.01})
    assert "Expected when the task has one right answer" in alert.message and "eval/pass@1" in alert.message


def test_a_kl_at_its_limit_alerts_once_until_it_falls_below_half():
    kls = [0.9, 1.1, 0.95, 1.2, 0.8, 1.3, 0.4, 1.5]  # crossings of 1.0 at steps 2, 4, 6; below 0.5 at step 7
    assert _alerts([_with(kl=k) for k in kls], kl_growth=1e9) == [("kl_explosion", 2), ("kl_explosion", 8)]


def test_records_without_a_metric_keep_that_check_state():
    # eval-only records between training steps neither clear nor advance the zero-std streak
    stuck, evaluation = _with(zero_std_fraction=1.0), {"eval/pass@1": 0.2}
    records = [stuck, evaluation, stuck, stuck, evaluation, stuck, stuck, evaluation, stuck]
    assert _alerts(records) == [("no_learning_signal", 7)]  # the 5th training record is the 7th record


def test_several_alerts_at_once_and_their_messages():
    monitor = HealthMonitor(patience=2)
    dead = {"reward/mean": 0.0, "reward/accuracy": 0.0, "zero_std_fraction": 1.0, "kl": 3.0}
    assert [a.name for a in monitor.update(1, dead)] == ["kl_explosion"]  # the others need 2 steps
    alerts = monitor.update(2, dead)
    assert [a.name for a in alerts] == ["no_learning_signal", "zero_rewards"]
    assert alerts[0].step == 2 and "group_size" in alerts[0].message  # says what to try
    assert "never match the checker" in alerts[1].message


def test_the_kl_message_names_the_value_and_what_to_try():
    [alert] = HealthMonitor().update(7, {"kl": 2.5})
    assert alert == (alert.name, 7, alert.message) and alert.name == "kl_explosion"
    assert "2.5" in alert.message and "kl_coef" in alert.message and "learning_rate" in alert.message


@pytest.mark.parametrize("value, number", [(3, 3.0), (0.5, 0.5), ("nan", math.nan), ("-inf", -math.inf),
                                           ("cpu", None), (True, None), ([1], None)])
def test_metric_number(value, number):
    result = metric_number(value)
    assert (result is None and number is None) or result == number or (math.isnan(result) and math.isnan(number))


@pytest.mark.parametrize("completion, think", [
    ("<think> a </think> <answer> b </answer>", " a "),
    ("<think> still thinking", " still thinking"),  # cut at the length limit
    ("<think> a <answer> b </answer>", " a "),  # no </think>: up to <answer>
    ("no tags at all, wait", ""),
])
def test_think_part(completion, think):
    assert think_part(completion) == think


@pytest.mark.parametrize("completions, rate", [
    (["<think> 3 + 4 = 8 . Wait , 3 + 4 = 7 </think> <answer> 7 </answer>"], 1.0),
    (["<think> WAIT </think>", "<think> Let me Check. </think>", "<think> verify; again </think>",
      "<think> recheck </think>", "<think> however </think>"], 1.0),  # every default word, any case
    (["<think> waiting checked rechecking verifying </think>"], 0.0),  # whole words only
    (["<think> 7 </think> <answer> wait </answer>"], 0.0),  # the word outside <think> does not count
    (["wait wait"], 0.0),  # no <think> part
    (["<think> wait </think>", "<think> 1 </think>", "<think> 2 </think>", "<think> 3 </think>"], 0.25),
    ([], 0.0),
])
def test_reflection_rate(completions, rate):
    assert reflection_rate(completions) == rate


def test_reflection_rate_with_other_words():
    completions = ["<think> hmm, 7 </think>", "<think> wait </think>", "<think> a.b </think>"]
    assert reflection_rate(completions, ("hmm",)) == pytest.approx(1 / 3)
    assert reflection_rate(completions, ("a.b",)) == pytest.approx(1 / 3)  # regex characters are literal
    assert "wait" in REFLECTION_WORDS and len(REFLECTION_WORDS) == 6
