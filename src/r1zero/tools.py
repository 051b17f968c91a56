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
budget). A traceback names the program `main.py`, not its random folder, so the same call shows the same text.
`sandbox_report()` says which layers of containment this machine enforces. Many calls at once: ToolRunner.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import NamedTuple

from r1zero.rewards.sandbox import SandboxLimits, SandboxResult, run_python, sandbox_capabilities

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


# ---- many calls at once, forked from small processes ------------------------------------------------------------

class ToolRunner:
    """Runs batches of calls on `concurrency` helper processes, one call at a time each.

    Why helpers: each call forks (subprocess with a pre-exec hook cannot use vfork), and a fork copies the page
    tables of the process that forks. Forked from a training process holding a model, an optimiser and torch's
    thread pools, a step's calls took 2.7 times as long as forked from small interpreters that import only this
    module. Each helper is a fresh interpreter (the trainer's sys.path, nothing else) with a single thread, so no
    fork ever happens beside another thread; it takes one JSON line per call on stdin and answers one line per
    call, in order. A batch that has not come back by its deadline (every call's time limit, plus a margin), or a
    helper that dies or answers what cannot be read, stops the helpers; the batch is run once more on fresh ones
    (calls have no side effects outside their own folder), and a second failure raises."""

    MARGIN_SECONDS = 30.0  # beyond the calls' own limits: start-up, the sandbox's set-up and clean-up

    def __init__(self, concurrency: int = 4):
        self.concurrency = concurrency
        self.helpers: list = []

    def _start(self) -> None:
        import subprocess
        import sys

        env = {"PYTHONPATH": os.pathsep.join(path for path in sys.path if path), "PATH": os.environ.get("PATH", "")}
        self.helpers = [subprocess.Popen([sys.executable, "-c", _SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         env=env) for _ in range(self.concurrency)]

    def run(self, name: str, codes: list[str], limits: ToolLimits = ToolLimits()) -> list[ToolResult]:
        """run_tool(name, code, limits) for each of `codes`, `concurrency` at a time; results in order."""
        if not codes:
            return []
        if name not in TOOLS:
            raise ValueError(f"tool {name!r} is not one of r1zero's tools: {', '.join(TOOLS)}")
        for attempt in range(2):
            if not self.helpers or any(helper.poll() is not None for helper in self.helpers):
                self.close()
                self._start()
            try:
                return self._run_batch(name, codes, limits)
            except (OSError, ValueError, TypeError, KeyError, TimeoutError):
                self.close()  # never read a stale answer as the next batch's
                if attempt:
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def _run_batch(self, name: str, codes: list[str], limits: ToolLimits) -> list[ToolResult]:
        import math
        import select

        count = len(self.helpers)
        shares = {helper: list(range(index, len(codes), count)) for index, helper in enumerate(self.helpers)}
        for helper, indices in shares.items():
            requests = "".join(json.dumps({"tool": name, "code": codes[index], "limits": dataclasses.asdict(limits)})
                               + "\n" for index in indices)
            helper.stdin.write(requests.encode())
            helper.stdin.flush()
        deadline = time.monotonic() + limits.wall_seconds * math.ceil(len(codes) / len(self.helpers)) \
            + self.MARGIN_SECONDS
        results: list[ToolResult | None] = [None] * len(codes)
        # raw reads of each helper's pipe (select sees only what no buffer has taken yet), split into lines here
        waiting = {helper.stdout.fileno(): (iter(indices), len(indices)) for helper, indices in shares.items()
                   if indices}
        pending = {fd: b"" for fd in waiting}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(codes)} tool calls did not come back within their limits")
            ready, _, _ = select.select(list(waiting), [], [], remaining)
            for fd in ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise OSError("a tool helper exited")
                pending[fd] += chunk
                indices, count = waiting[fd]
                *lines, pending[fd] = pending[fd].split(b"\n")
                for line in lines:
                    results[next(indices)] = ToolResult(**json.loads(line))
                    count -= 1
                waiting[fd] = (indices, count)
                if count == 0:
                    del waiting[fd]
        return results

    def close(self) -> None:
        """Stop the helpers (they also exit when this process does: their stdin closes)."""
        for helper in self.helpers:
            helper.kill()
            helper.wait()
            for stream in (helper.stdin, helper.stdout):
                stream.close()
        self.helpers = []


def serve() -> None:
    """A helper's loop (ToolRunner): one call per stdin line, run in turn, each result written as one stdout line;
    exits when stdin closes."""
    import sys

    sandbox_capabilities()  # probed once, before any call
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = run_tool(request["tool"], request["code"], ToolLimits(**request["limits"]))
        except Exception as error:  # an internal failure (the sandbox itself), told to the model as an error
            result = ToolResult(f"(the sandbox failed: {type(error).__name__})\n", "error", 0.0, None)
        sys.stdout.write(json.dumps(dataclasses.asdict(result)) + "\n")
        sys.stdout.flush()


_SERVE = "from r1zero.tools import serve; serve()"
