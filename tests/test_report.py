"""The HTML report: built from a synthetic run folder, checked as text, then rendered in headless Chromium."""

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from html import escape
from pathlib import Path

import pytest

from r1zero.cli import main
from r1zero.config import TrainConfig, to_yaml
from r1zero.report import CHARTS, TOOL_CHART, build_report, line_chart, read_metrics, write_report
from r1zero.trainer import train

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
HOSTILE = "<script>alert(1)</script>"
STEPS, EVAL_EVERY = 60, 20


def _synthetic_run(folder: Path) -> Path:
    """60 steps of plausible R1-Zero curves, evaluations every 20 steps with samples, one recorded alert."""
    folder.mkdir()
    records = []
    for step in range(0, STEPS + 1):
        progress = step / STEPS
        if step > 0:
            records.append({
                "step": step, "reward/mean": 0.2 + 0.9 * progress, "reward/accuracy": 0.1 + 0.6 * progress,
                "reward/format": 0.2 + 0.6 * progress, "response/length_mean": 20 + 15 * progress,
                "response/truncated_fraction": 0.3 * (1 - progress), "kl": 0.002 * step,
                "entropy": 1.2 - 0.8 * progress, "clip_fraction": 0.02 + 0.01 * math.sin(step),
                "zero_std_fraction": 0.8 - 0.5 * progress, "loss": "nan" if step == 30 else 0.05 * math.cos(step),
                "grad_norm": 1.0 + progress, "response/reflection_rate": 0.1 * progress})
        if step == 30:
            records[-1]["alerts"] = [{"name": "non_finite_loss", "step": 30, "message": "loss nan: try bfloat16"}]
        if step % EVAL_EVERY == 0:
            records.append({"step": step, "eval/accuracy_greedy": 0.1 + 0.7 * progress, "eval/pass@1": 0.6 * progress,
                            "eval/pass@2": 0.75 * progress, "eval/maj@2": 0.65 * progress, "eval/format": progress,
                            "eval/response_length": 25.0, "eval/ood/accuracy_greedy": 0.1 * progress,
                            "eval/ood/pass@1": 0.05 * progress, "eval/ood/format": progress,
                            "eval/ood/response_length": 28.0})
            samples = []
            for problem in range(3):
                for index in range(2):
                    thought = "3 + 4 = 7 . wait , check" if step == STEPS else "3 + 4"
                    completion = f"<think> {thought} </think> <answer> {step + problem} </answer>"
                    if (step, problem, index) == (EVAL_EVERY, 0, 0):
                        completion = f"<think> {HOSTILE} </think> <answer> 7 </answer>"
                    samples.append({"problem_id": f"sums-test-{problem}", "sample_index": index,
                                    "completion": completion, "answer": str(step + problem),
                                    "correct": problem == 0, "format": 1.0})
            (folder / "samples").mkdir(exist_ok=True)
            (folder / "samples" / f"step_{step:06d}.jsonl").write_text(
                "".join(json.dumps(s) + "\n" for s in samples))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 61, "kl"')
    (folder / "config.yaml").write_text(to_yaml(TrainConfig(kl_coef=0.001, output_dir=str(folder))))
    return folder


def test_report_holds_every_section_and_escapes_model_output(tmp_path):
    page = build_report(_synthetic_run(tmp_path / "run"))
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower() and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    # one chart per CHARTS entry but the tool chart (a run without tools), all with data: 12 SVGs; the rewards
    # chart has its 3 components in its legend
    assert page.count("<svg") == len(CHARTS) - 1 == 12 and TOOL_CHART not in page
    rewards_figure = page[page.index("Rewards (training batch)"):page.index("Held-out accuracy")]
    assert [name for name in ("reward/mean", "reward/accuracy", "reward/format") if name in rewards_figure] == [
        "reward/mean", "reward/accuracy", "reward/format"]
    held_out_figure = page[page.index("Held-out accuracy"):page.index("Out of distribution")]
    ood_figure = page[page.index("Out of distribution"):page.index("Response length (tokens)")]
    assert "eval/ood/pass@1" in ood_figure and "eval/ood/pass@1" not in held_out_figure
    assert "eval/pass@1" in held_out_figure and "eval/ood/response_length" not in ood_figure
    for key in ("eval/pass@2", "eval/maj@2", "kl", "entropy", "clip_fraction", "zero_std_fraction",
                "response/reflection_rate", "held-out samples: wait/check"):
        assert key in page, key
    # samples at 4 evaluations (0, 20, 40, 60), sample 0 of 3 problems each: 12 completion rows
    assert page.count("<pre>") == 12 and page.count("<tr><td>60</td>") == 3
    assert "1 alert(s), recorded during training" in page and "loss nan: try bfloat16" in page
    assert "<td>kl_coef</td><td>0.001</td>" in page  # the settings table from config.yaml
    assert "64 metric records up to step 60" in page  # 60 steps + 4 evaluations; the cut last line skipped


def test_line_chart_points_land_where_the_values_say():
    svg = line_chart({"a": [(0.0, 0.0), (10.0, 1.0), (20.0, math.nan), (30.0, 0.5)]})
    # x 0..30 spans LEFT 56 .. 560-14 = 546 px; y 0..1 spans 10 + 184 = 194 .. 10 px
    path = re.search(r'<path d="([^"]*)"', svg).group(1)
    assert path == "M56.0,194.0 L219.3,10.0 M546.0,102.0"  # NaN breaks the line: a new M after it
    assert svg.count("<circle") == 3


def test_a_monitored_run_without_alerts_says_so_and_recomputes_nothing(tmp_path):
    # r1zero writes health/alerts (the count) every step, and the alerts list only at a step where one started:
    # zero alerts recorded is not "not monitored"
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": s, "zero_std_fraction": 1.0, "reward/accuracy": 0.0, "reward/format": 0.5,
                "health/alerts": 0} for s in range(1, 7)]  # would fire no_learning_signal if recomputed
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    page = build_report(run)
    assert "0 alert(s), recorded during training" in page and "no_learning_signal" not in page


def test_alerts_are_recomputed_when_training_recorded_none(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": s, "zero_std_fraction": 1.0, "reward/accuracy": 0.0, "reward/format": 0.5}
               for s in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    page = build_report(run)
    assert "1 alert(s), recomputed from metrics.jsonl" in page
    assert "<b>no_learning_signal</b> at step 5" in page
    assert "config.yaml not found" in page and "no samples/ folder" in page


def test_report_command_on_a_real_training_run(llama_dir, tmp_path, capsys):
    config = TrainConfig(model=str(llama_dir), output_dir=str(tmp_path / "run"), max_steps=2, prompts_per_step=2,
                         group_size=2, max_new_tokens=6, eval_problems=3, eval_samples=2, eval_every=1,
                         report_to=["none"])
    output = train(config)
    assert sorted(p.name for p in (output / "samples").iterdir()) == [
        "step_000000.jsonl", "step_000001.jsonl", "step_000002.jsonl"]
    samples = [json.loads(line) for line in (output / "samples" / "step_000002.jsonl").read_text().splitlines()]
    assert [(r["problem_id"], r["sample_index"]) for r in samples] == [
        (f"sums-test-{p}", i) for p in range(3) for i in range(2)]
    assert main(["report", str(output)]) == 0
    page = (output / "report.html").read_text()
    assert f"wrote {output / 'report.html'}" in capsys.readouterr().out
    assert escape(samples[0]["completion"]) in page  # the completions of the last evaluation are shown
    assert page.count("<tr><td>2</td><td>sums-test-") == 3


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="needs Debian's chromium package (apt-get install chromium); runs always in CI")
def test_report_renders_in_headless_chromium(tmp_path):
    assert CHROMIUM is not None, "CI must have chromium: .ci/run installs it with apt-get"
    report = write_report(_synthetic_run(tmp_path / "run"))
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", "--v=0"]

    def chromium(*extra: str) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as profile:
            return subprocess.run([CHROMIUM, *flags, f"--user-data-dir={profile}", *extra, report.as_uri()],
                                  capture_output=True, text=True, timeout=120)

    dom = chromium("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    paths = re.findall(r'<path d="([^"]*)"', dom.stdout)
    assert dom.stdout.count("<svg") == 12 and len(paths) >= 12 + 2  # rewards has 3 lines
    assert all(re.fullmatch(r"M[\d.]+,[\d.]+( [ML][\d.]+,[\d.]+)*", d) for d in paths), paths
    assert "<script" not in dom.stdout and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert shot.returncode == 0 and screenshot.stat().st_size > 20_000, shot.stderr[-2000:]
    for log in (dom.stderr, shot.stderr):
        problems = [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line
                    or "Refused to" in line]
        assert problems == [], problems


def test_a_run_with_tools_gets_the_tool_chart_and_each_samples_calls(tmp_path):
    folder = _synthetic_run(tmp_path / "run")
    metrics = folder / "metrics.jsonl"
    records = read_metrics(metrics)  # (the synthetic file ends with a line cut short: dropped here)
    for record in records:
        if "reward/mean" in record:
            record |= {"tools/calls_mean": 0.02 * record["step"], "tools/completions_with_call": 0.01 * record["step"],
                       "tools/error_rate": 0.1, "tools/timeout_rate": 0.0, "tools/void_turn_rate": 0.05,
                       "tools/seconds": 0.3}
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    for path in (folder / "samples").iterdir():
        samples = [json.loads(line) for line in path.read_text().splitlines()]
        for sample in samples:
            sample["tool_calls"] = ["ok", "timeout"] if sample["problem_id"].endswith("0") else []
        path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    page = build_report(folder)
    assert page.count("<svg") == len(CHARTS) == 13 and TOOL_CHART in page
    chart = page[page.index(TOOL_CHART):]
    chart = chart[:chart.index("</figure>")]
    assert all(key in chart for key in ("tools/calls_mean", "tools/completions_with_call", "tools/void_turn_rate"))
    assert "tools/seconds" not in chart  # seconds are not a share: not on this chart
    assert "<th>tool calls (status)</th>" in page and "<td>ok, timeout</td>" in page and "<td>none</td>" in page
