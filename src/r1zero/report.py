"""The HTML report of a training run: one self-contained file, plots drawn here as inline SVG.

    r1zero report runs/sums-20250101-120000      # writes runs/sums-20250101-120000/report.html

Reads what `r1zero train` leaves in the run folder: metrics.jsonl (plots, alerts), config.yaml (settings) and
samples/step_NNNNNN.jsonl (held-out completions of each evaluation). The page loads nothing (no scripts, no
fonts, no CDN; a Content-Security-Policy forbids it) and every text that comes from the run, model output
above all, is escaped with html.escape.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

import yaml

from r1zero import metric_names as names
from r1zero.health import REFLECTION_WORDS, HealthMonitor, metric_number, reflection_rate

Series = dict[str, list[tuple[float, float]]]  # line name -> (step, value) points in step order

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 560, 220, 56, 14, 10, 26  # chart size and margins, pixels

TOOL_CHART = "Tool calls: share of completions calling, calls per completion, errors, timeouts, void turns"
# (chart title, which logged keys it plots). Every chart is shown, with a note when its keys were not logged; the
# tool chart only for runs with tools.
CHARTS = (
    ("Rewards (training batch)", lambda key: key.startswith(names.REWARD_PREFIX)),
    ("Held-out accuracy, pass@k, maj@K, format",
     lambda key: key.startswith(names.EVAL_PREFIX) and not key.startswith(names.EVAL_OOD_PREFIX)
     and key != names.EVAL_RESPONSE_LENGTH),
    ("Out of distribution (longer problems than training): accuracy, pass@k, format",
     lambda key: key.startswith(names.EVAL_OOD_PREFIX) and not key.endswith("response_length")),
    ("Response length (tokens)", lambda key: key in (names.RESPONSE_LENGTH, names.EVAL_RESPONSE_LENGTH,
                                                     names.EVAL_OOD_PREFIX + "response_length")),
    ("Responses cut at max_new_tokens", lambda key: key == names.TRUNCATED_FRACTION),
    ("KL to the reference", lambda key: key == names.KL),
    ("Entropy (nats per token)", lambda key: key == names.ENTROPY),
    ("Clip fraction", lambda key: key == names.CLIP_FRACTION),
    ("Groups with zero reward variance", lambda key: key == names.ZERO_STD_FRACTION),
    ("Reflection rate", lambda key: key == names.REFLECTION_RATE),
    (TOOL_CHART, lambda key: key.startswith(names.TOOLS_PREFIX) and key != "tools/seconds"),
    ("Loss", lambda key: key == names.LOSS),
    ("Gradient norm", lambda key: key == names.GRAD_NORM),
)

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1240px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; border: 1px solid #e4e4e4; padding: 8px; width: 560px; }
figcaption { font-weight: 600; } .legend span { margin-right: 12px; white-space: nowrap; }
.swatch { display: inline-block; width: 12px; height: 3px; vertical-align: middle; margin-right: 4px; }
.empty { color: #888; width: 560px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; max-width: 760px; }
.alert { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 10px; margin: 6px 0; }
.yes { color: #1a7f37; } .no { color: #b42318; }
"""


# ---- reading the run folder ---------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl in order; a line that is not a JSON object (a run killed mid-line) is
    skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def read_samples(run_dir: Path) -> dict[int, list[dict]]:
    """step -> the held-out sample records written at that step's evaluation (samples/step_NNNNNN.jsonl)."""
    samples = {}
    for path in sorted((run_dir / "samples").glob("step_*.jsonl")):
        step = int(path.stem.removeprefix("step_"))
        samples[step] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return samples


def metric_series(records: list[dict]) -> Series:
    """Every numeric key of the records as (step, value) points; non-finite values kept (plotted as gaps)."""
    series: Series = {}
    for record in records:
        for key, value in record.items():
            number = metric_number(value)
            if key != "step" and number is not None:
                series.setdefault(key, []).append((float(record["step"]), number))
    return series


def recorded_alerts(records: list[dict]) -> list[dict] | None:
    """Alerts the trainer logged ({"alerts": [{"name", "step", "message"}, ...]} or "alert/<name>": message);
    None when no record has either key, nor the alert count r1zero logs every step (a run logged without health
    monitoring). A monitored run in which no alert fired gives []."""
    alerts, seen = [], False
    for record in records:
        for key, value in record.items():
            if key == names.ALERT_COUNT:
                seen = True
            elif key == names.ALERTS and isinstance(value, list):
                seen = True
                alerts += [{"step": record["step"], **a} for a in value if isinstance(a, dict)]
            elif key.startswith("alert/"):
                seen = True
                alerts.append({"name": key.removeprefix("alert/"), "step": record["step"], "message": str(value)})
    return alerts if seen else None


# ---- drawing -----------------------------------------------------------------------------------------


def nice_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round tick values inside [low, high]: multiples of 1, 2, 2.5 or 5 x 10^n, at most `most` of them.

    >>> nice_ticks(1, 60), nice_ticks(-0.01, 0.03)
    ([10.0, 20.0, 30.0, 40.0, 50.0, 60.0], [-0.01, 0.0, 0.01, 0.02, 0.03])
    """
    magnitude = 10 ** math.floor(math.log10((high - low) / most))
    spacing = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if (high - low) / (m * magnitude) <= most)
    first = math.ceil(low / spacing - 1e-9)
    count = math.floor(high / spacing + 1e-9) - first + 1
    return [float(round((first + i) * spacing, 12)) for i in range(count)]


def line_chart(series: Series) -> str:
    """An inline <svg> line chart of the series (one colour each, in COLORS order), with axes and ticks.
    Non-finite values break the line; series of at most 40 points also get a dot per point."""
    points = [(x, y) for line in series.values() for x, y in line if math.isfinite(y)]
    if not points:
        return '<p class="empty">only non-finite values logged</p>'
    x_low, x_high = min(x for x, _ in points), max(x for x, _ in points)
    y_low, y_high = min(y for _, y in points), max(y for _, y in points)
    if x_low == x_high:
        x_low, x_high = x_low - 1, x_high + 1
    if y_low == y_high:
        pad = abs(y_low) * 0.1 or 1.0
        y_low, y_high = y_low - pad, y_high + pad
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    to_x = lambda x: LEFT + (x - x_low) / (x_high - x_low) * plot_width  # noqa: E731
    to_y = lambda y: TOP + (y_high - y) / (y_high - y_low) * plot_height  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-size="11" font-family="sans-serif">']
    for y in nice_ticks(y_low, y_high):
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{to_y(y):.1f}" y2="{to_y(y):.1f}" '
                     f'stroke="#eee"/><text x="{LEFT - 4}" y="{to_y(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for x in nice_ticks(x_low, x_high):
        parts.append(f'<text x="{to_x(x):.1f}" y="{HEIGHT - 8}" text-anchor="middle">{x:.4g}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" '
                 f'stroke="#999"/>')
    for (name, line), color in zip(series.items(), COLORS * (len(series) // len(COLORS) + 1)):
        path, pen_down = [], False
        for x, y in line:
            if math.isfinite(y):
                path.append(f"{'L' if pen_down else 'M'}{to_x(x):.1f},{to_y(y):.1f}")
            pen_down = math.isfinite(y)
        parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="1.8">'
                     f'<title>{escape(name)}</title></path>')
        if len(line) <= 40:
            parts += [f'<circle cx="{to_x(x):.1f}" cy="{to_y(y):.1f}" r="2.5" fill="{color}"/>'
                      for x, y in line if math.isfinite(y)]
    return "".join(parts) + "</svg>"


def chart_figure(title: str, series: Series) -> str:
    """A captioned chart with an HTML legend, or a note when nothing was logged for it."""
    if not series:
        return f'<figure><figcaption>{escape(title)}</figcaption><p class="empty">not logged in this run</p></figure>'
    legend = "".join(f'<span><i class="swatch" style="background:{color}"></i>{escape(name)}</span>'
                     for name, color in zip(series, COLORS * (len(series) // len(COLORS) + 1)))
    return (f'<figure><figcaption>{escape(title)}</figcaption><div class="legend">{legend}</div>'
            f'{line_chart(series)}</figure>')


# ---- sections -----------------------------------------------------------------------------------------


def samples_table(samples: dict[int, list[dict]], steps_shown: int = 4, problems_shown: int = 4) -> str:
    """Sample 0 of the first `problems_shown` held-out problems at up to `steps_shown` evaluations (first,
    last and evenly between), so one problem can be followed through training. With tools the completion shows
    each turn, the tool's output between its markers, and a column lists the calls' statuses."""
    if not samples:
        return '<p class="empty">no samples/ folder: this run saved no evaluation samples</p>'
    steps = sorted(samples)
    tools = any("tool_calls" in record for records in samples.values() for record in records)  # a run with tools
    picked = sorted({steps[round(i * (len(steps) - 1) / max(1, steps_shown - 1))] for i in range(steps_shown)})
    rows = []
    for step in picked:
        problem_ids = list(dict.fromkeys(r["problem_id"] for r in samples[step]))[:problems_shown]
        for record in samples[step]:
            if record["problem_id"] in problem_ids and record["sample_index"] == 0:
                correct = bool(record.get("correct"))
                rows.append(f'<tr><td>{step}</td><td>{escape(str(record["problem_id"]))}</td>'
                            f'<td><pre>{escape(str(record["completion"]))}</pre></td>'
                            f'<td>{escape(str(record.get("answer")))}</td>'
                            f'<td class="{"yes" if correct else "no"}">{correct}</td>'
                            f'<td>{escape(str(record.get("format", "")))}</td>'
                            + (f'<td>{escape(", ".join(record["tool_calls"]) or "none")}</td>' if tools else "")
                            + "</tr>")
    return ("<table><tr><th>step</th><th>problem</th><th>completion</th><th>answer</th><th>correct</th>"
            "<th>format reward</th>" + ("<th>tool calls (status)</th>" if tools else "") + "</tr>" + "".join(rows)
            + "</table>")


def settings_table(config_path: Path) -> str:
    if not config_path.is_file():
        return f'<p class="empty">{escape(config_path.name)} not found</p>'
    text = config_path.read_text(encoding="utf-8")
    try:
        settings = yaml.safe_load(text)
    except yaml.YAMLError:
        settings = None
    if not isinstance(settings, dict):
        return f"<pre>{escape(text)}</pre>"
    rows = "".join(f"<tr><td>{escape(str(key))}</td><td>{escape(json.dumps(value))}</td></tr>"
                   for key, value in settings.items())
    return f"<table><tr><th>setting</th><th>value</th></tr>{rows}</table>"


def alerts_section(records: list[dict]) -> str:
    alerts, note = recorded_alerts(records), "recorded during training"
    if alerts is None:  # not monitored while training: replay the history through the default checks
        monitor, note = HealthMonitor(), "recomputed from metrics.jsonl with HealthMonitor's default thresholds"
        alerts = [a._asdict() for record in records for a in monitor.update(record["step"], record)]
    items = "".join(f'<div class="alert"><b>{escape(str(a.get("name")))}</b> at step {escape(str(a.get("step")))}: '
                    f'{escape(str(a.get("message")))}</div>' for a in alerts)
    return f"<p>{len(alerts)} alert(s), {note}.</p>{items}"


def build_report(run_dir: str | Path) -> str:
    """The report page of a run folder, as one HTML string."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found; give the output folder of `r1zero train` "
                                f"(the one holding metrics.jsonl and config.yaml)")
    records = read_metrics(metrics_path)
    series, samples = metric_series(records), read_samples(run_dir)
    charts = []
    for title, wanted in CHARTS:
        chosen = {key: points for key, points in series.items() if wanted(key)}
        if title == TOOL_CHART and not chosen:
            continue
        if title == "Reflection rate" and samples:  # the "aha" signal, counted in the saved held-out samples
            chosen["held-out samples: " + "/".join(REFLECTION_WORDS)] = [
                (float(step), reflection_rate([r["completion"] for r in records_at]))
                for step, records_at in sorted(samples.items())]
        charts.append(chart_figure(title, chosen))
    last_eval = next((r for r in reversed(records) if any(k.startswith("eval/") for k in r)), {})
    shown = lambda value: f"{value:.4g}" if isinstance(value, float) else str(value)  # noqa: E731
    summary = "".join(f"<tr><td>{escape(key)}</td><td>{escape(shown(value))}</td></tr>"
                      for key, value in last_eval.items())
    last_step = max((r["step"] for r in records), default=0)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>r1zero report: {escape(run_dir.name)}</title><style>{STYLE}</style></head>
<body>
<h1>r1zero report: {escape(run_dir.name)}</h1>
<p>{len(records)} metric records up to step {escape(str(last_step))}; {len(samples)} evaluations with samples.</p>
<h2>Last held-out evaluation</h2><table>{summary}</table>
<h2>Health alerts</h2>{alerts_section(records)}
<h2>Training curves</h2><div class="charts">{"".join(charts)}</div>
<h2>Held-out completions during training</h2>{samples_table(samples)}
<h2>Settings (config.yaml)</h2>{settings_table(run_dir / "config.yaml")}
</body></html>
"""


def write_report(run_dir: str | Path) -> Path:
    """Write run_dir/report.html; returns its path."""
    path = Path(run_dir) / "report.html"
    path.write_text(build_report(run_dir), encoding="utf-8")
    return path
