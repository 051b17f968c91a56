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

import dataclasses
import json
import os
import signal
from dataclasses import dataclass
from typing import NamedTuple

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


class ToolCall(NamedTuple):
    """One call in a rollout, as the metrics see it: how it ended (one of STATUSES, or "refused": a call past
    max_tool_calls, not run), its time in the sandbox, and how many tokens of output the row received."""

    status: str
    seconds: float
    output_tokens: int


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
    room = max(0, limits.max_chars - len(note))
    text = text[:room]
    if note and text and not text.endswith("\n"):
        text = text[:max(0, room - 1)] + "\n"  # the note is a line of its own, after what the program printed
    text += note  # the line saying why it stopped is always kept
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


# ---- many calls at once, forked from a small process ------------------------------------------------------------

class ToolRunner:
    """Runs batches of calls `concurrency` at a time in a helper process of its own.

    Why a helper: each call forks (subprocess with a pre-exec hook cannot use vfork), and a fork copies the page
    tables of the process that forks. Forked from a training process holding a model, an optimiser and torch's
    thread pools, a call costs several times what it costs forked from a small interpreter that has imported only
    this module. The helper is a fresh interpreter (the trainer's sys.path, nothing else), takes one JSON line per
    call on stdin and answers one per call on stdout, in any order, tagged with the call's index. If it dies, it is
    started again and the batch run again (calls have no side effects outside their own folder)."""

    def __init__(self, concurrency: int = 4):
        self.concurrency = concurrency
        self.process = None

    def _start(self) -> None:
        import subprocess
        import sys

        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(self.concurrency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={"PYTHONPATH": os.pathsep.join(path for path in sys.path if path), "PATH": os.environ.get("PATH", "")},
            text=True, bufsize=1)

    def run(self, name: str, codes: list[str], limits: ToolLimits = ToolLimits()) -> list[ToolResult]:
        """run_tool(name, code, limits) for each of `codes`, concurrently; results in order."""
        if not codes:
            return []
        if name not in TOOLS:
            raise ValueError(f"tool {name!r} is not one of r1zero's tools: {', '.join(TOOLS)}")
        for attempt in range(2):
            if self.process is None or self.process.poll() is not None:
                self._start()
            try:
                for index, code in enumerate(codes):
                    self.process.stdin.write(json.dumps({"index": index, "tool": name, "code": code,
                                                         "limits": dataclasses.asdict(limits)}) + "\n")
                self.process.stdin.flush()
                results: list[ToolResult | None] = [None] * len(codes)
                for _ in codes:
                    line = self.process.stdout.readline()
                    if not line:
                        raise BrokenPipeError("the tool helper exited")
                    answer = json.loads(line)
                    index = answer.pop("index")
                    results[index] = ToolResult(**answer)
                return results
            except (BrokenPipeError, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the helper (it also exits when this process does: its stdin closes)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                stream.close()
            self.process = None


def serve(concurrency: int) -> None:
    """The helper's loop (ToolRunner): a call per stdin line, run on a pool of `concurrency` threads, each result
    written as one stdout line as soon as it is done; exits when stdin closes."""
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()

    def answer(request: dict) -> None:
        try:
            result = run_tool(request["tool"], request["code"], ToolLimits(**request["limits"]))
        except Exception as error:  # an internal failure (the sandbox itself), told to the model as an error
            result = ToolResult(f"(the sandbox failed: {type(error).__name__})\n", "error", 0.0, None)
        line = json.dumps({"index": request["index"], **dataclasses.asdict(result)})
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    with ThreadPoolExecutor(concurrency) as pool:
        for line in sys.stdin:
            pool.submit(answer, json.loads(line))


_SERVE = "import sys; from r1zero.tools import serve; serve(int(sys.argv[1]))"
