"""Tools a model may call while it reasons: one call, run the way a rollout runs it.

    from r1zero.tools import run_tool
    result = run_tool("python", "print(123 * 456)")
    result.text, result.status          # ('56088\\n', 'ok')

A call runs in r1zero's sandbox (r1zero.rewards.sandbox: a fresh process in a fresh folder that is deleted after
it, only the standard library, no network where the machine can block it, the limits below): every call is a new
process, and nothing carries over from one call to the next. What the model is shown, `text`, by `status`:

    ok        what the program printed on stdout, or "(no output)"
    error     what it printed, then the last `error_lines` lines of its stderr: a syntax error, an exception
    timeout   what it printed before it was stopped, then a line saying it ran past its time
    killed    what it printed, then a line naming the signal that ended it
    limit     what it printed, then a line naming the limit it went past: output, memory or file size

cut to its first `max_chars` characters, the line saying why it stopped kept (a rollout cuts again, to its token
budget). A traceback names the program `main.py`, not its random folder, so the same call shows the same text. `sandbox_report()` says which
layers of containment this machine enforces.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from r1zero.rewards.sandbox import SandboxLimits, SandboxResult, run_python

TOOLS = ("python",)
STATUSES = ("ok", "error", "timeout", "killed", "limit")


@dataclass(frozen=True)
class ToolLimits:
    """The limits of one call; the sandbox's own defaults, with a smaller output cap: a call's output goes back
    into the model's context."""

    wall_seconds: float = 2.0  # wall-clock limit; the whole process group is killed at it
    memory_bytes: int = 512 * 2**20  # address space per process
    output_bytes: int = 64 * 2**10  # stdout and stderr each; more stops the program (status limit)
    max_chars: int = 2000  # of the text shown to the model
    error_lines: int = 5  # of stderr shown after an error


@dataclass(frozen=True)
class ToolResult:
    """One call: what the model is shown, how the call ended (one of STATUSES), and its wall time."""

    text: str
    status: str
    seconds: float
    returncode: int | None  # the program's exit status; negative: a signal; None: stopped by the sandbox


def run_tool(name: str, code: str, limits: ToolLimits = ToolLimits()) -> ToolResult:
    """Run one call of tool `name` (see TOOLS) on `code`; never raises for anything the code does."""
    if name not in TOOLS:
        raise ValueError(f"tool {name!r} is not one of r1zero's tools: {', '.join(TOOLS)}")
    result = run_python(code, limits=SandboxLimits(wall_seconds=limits.wall_seconds,
                                                   memory_bytes=limits.memory_bytes,
                                                   output_bytes=limits.output_bytes))
    status, note = outcome(result, limits)
    text = result.stdout
    if status in ("error", "limit") and result.stderr.strip():
        # the traceback names the program main.py, not the run's random folder: the same call shows the same text
        stderr = result.stderr.replace(result.workdir + "/", "")
        text += "\n".join(stderr.strip().splitlines()[-limits.error_lines:]) + "\n"
    note = note + "\n" if note else ""
    if not text and not note:
        text = "(no output)\n"
    text = text[:max(0, limits.max_chars - len(note))] + note  # the line saying why it stopped is always kept
    return ToolResult(text[:limits.max_chars], status, result.seconds, result.returncode)


def outcome(result: SandboxResult, limits: ToolLimits) -> tuple[str, str]:
    """(status, the line added for the model, or "") of a finished sandbox run."""
    if result.output_exceeded:
        return "limit", f"(stopped: the output went past {limits.output_bytes} bytes)"
    if result.timed_out:
        return "timeout", f"(stopped: the program ran past {limits.wall_seconds:g} seconds)"
    code = result.returncode
    if code is None:
        return "killed", "(stopped: the program could not be ended normally)"
    if code == -signal.SIGXCPU:
        return "timeout", "(stopped: the program used up its CPU time)"
    if code == -signal.SIGXFSZ:
        return "limit", "(stopped: the program wrote a file past its size limit)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return "killed", f"(killed by {name})"
    if code > 0:
        last = result.stderr.strip().splitlines()[-1:] or [""]
        return ("limit", "") if last[0].startswith("MemoryError") else ("error", "")
    return "ok", ""
