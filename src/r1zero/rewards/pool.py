"""Scoring pool: reward calls in worker processes, each with a hard wall-clock limit per sample.

    with ScoringPool(workers=2, time_limit_seconds=10) as pool:
        scores = pool.run([(math_reward, completion, example), ...])   # one Score per call, in order

Why processes. math_verify's own timeouts use SIGALRM, which works only on a main thread, and a huge computation
(9^9^9^9) runs in C code that no signal interrupts; rewards that silently return 0 or hang have cost others whole
runs. Here a worker that passes the limit on a sample is killed (SIGKILL) and replaced, and the sample scores 0
with reason "timeout" (failure TIMEOUT). A worker that dies (segfault, out of memory) scores its sample 0 as an
exception and is replaced too. Workers are fresh interpreters, as with multiprocessing's 'spawn' context (no copy
of the trainer's memory, threads or CUDA state), but started with subprocess and given the parent's sys.path, so
a script without an `if __name__ == "__main__":` guard is never re-run in them. They speak multiprocessing's
Connection protocol over a socket pair, ignore Ctrl-C (the trainer handles it), exit when the trainer's end of
the socket closes, and each has an address-space limit (`memory_bytes`), so a sample that tries to allocate the
machine fails with MemoryError inside its worker.

The clock starts when a call is handed to a worker that has finished starting (imported the rewards), so slow
worker start-up never counts against a sample. Functions must be picklable: module-level functions,
functools.partial of them, or objects such as r1zero.rewards.custom.FileRewardFunction.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait

from r1zero.example import Example
from r1zero.rewards.score import EXCEPTION, TIMEOUT, Score, as_score

STARTUP_SECONDS = 120.0  # a worker that has not started (imported its modules) by then is an error


class ScoringPool:
    """`workers` processes scoring (function, completion, example) calls with a hard per-call limit."""

    def __init__(self, workers: int, time_limit_seconds: float, preload: Sequence[str] = (),
                 memory_bytes: int = 4 * 2**30):
        if workers < 1 or time_limit_seconds <= 0:
            raise ValueError(f"a scoring pool needs workers >= 1 and time_limit_seconds > 0, got {workers} and "
                             f"{time_limit_seconds}")
        self.time_limit_seconds = time_limit_seconds
        self.preload = tuple(preload)
        self.memory_bytes = memory_bytes
        self.workers = [self._start_worker() for _ in range(workers)]
        self.replaced = 0  # workers killed or dead and replaced, over the pool's life

    # ---- public -----------------------------------------------------------------------------------

    def run(self, calls: Sequence[tuple[Callable, str, Example]]) -> list[Score]:
        """Score every call, up to one per worker at a time; results in the order of `calls`."""
        results: list[Score | None] = [None] * len(calls)
        pending = deque(range(len(calls)))
        while pending or any(worker.task is not None for worker in self.workers):
            for worker in self.workers:
                if worker.ready and worker.task is None and pending:
                    index = pending.popleft()
                    worker.send(index, calls[index], self.time_limit_seconds)
            self._wait_and_collect(results)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def __enter__(self) -> "ScoringPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ---- internals ----------------------------------------------------------------------------------

    def _start_worker(self) -> "_Worker":
        parent_end, child_end = socket.socketpair()
        with child_end:
            process = subprocess.Popen([sys.executable, "-c", _WORKER_BOOTSTRAP, str(child_end.fileno())],
                                       pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL)
        connection = Connection(parent_end.detach())
        connection.send((list(sys.path), self.preload, self.memory_bytes))
        return _Worker(process, connection)

    def _replace(self, worker: "_Worker") -> None:
        worker.stop(kill=True)
        self.workers[self.workers.index(worker)] = self._start_worker()
        self.replaced += 1

    def _wait_and_collect(self, results: list) -> None:
        now = time.monotonic()
        deadlines = [w.deadline for w in self.workers if w.task is not None]
        deadlines += [w.started + STARTUP_SECONDS for w in self.workers if not w.ready]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        by_connection = {worker.connection: worker for worker in self.workers}
        for connection in wait(list(by_connection), timeout=timeout):
            worker = by_connection[connection]
            try:
                message = connection.recv()
            except (EOFError, OSError):
                exit_code = worker.exit_code()
                if worker.task is not None:
                    results[worker.task] = Score(0.0, f"scoring worker died (exit code {exit_code})", EXCEPTION)
                elif not worker.ready:
                    raise RuntimeError(f"a scoring worker exited while starting (exit code {exit_code}); its error "
                                       f"is printed above")
                self._replace(worker)
                continue
            if message[0] == "ready":
                worker.ready = True
            else:
                _, index, value, reason, failure = message
                results[index] = Score(value, reason, failure)
                worker.task = None
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.task is not None and now >= worker.deadline:
                results[worker.task] = Score(0.0, "timeout", TIMEOUT)
                self._replace(worker)
            elif not worker.ready and now >= worker.started + STARTUP_SECONDS:
                raise RuntimeError(f"a scoring worker did not start within {STARTUP_SECONDS:.0f} s")


class _Worker:
    def __init__(self, process, connection: Connection):
        self.process = process
        self.connection = connection
        self.started = time.monotonic()
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0

    def send(self, index: int, call: tuple, time_limit_seconds: float) -> None:
        self.task = index
        self.deadline = time.monotonic() + time_limit_seconds
        self.connection.send((index, *call))

    def exit_code(self) -> int | None:
        """The exit code of a worker whose connection closed (it may take a moment to be reaped)."""
        try:
            return self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except (OSError, ValueError):
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.connection.close()


# Runs in the fresh interpreter with only the standard library until the parent's sys.path is in place.
_WORKER_BOOTSTRAP = """
import sys
from multiprocessing.connection import Connection
connection = Connection(int(sys.argv[1]))
path, preload, memory_bytes = connection.recv()
sys.path[:] = path
from r1zero.rewards.pool import _worker_main
_worker_main(connection, preload, memory_bytes)
"""


def _worker_main(connection: Connection, preload: Sequence[str], memory_bytes: int) -> None:
    """A worker: import the reward modules, say ready, then score calls until told to stop (None) or the pipe
    closes. Every exception becomes a 0 score with the exception's type and message as reason."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    except (ImportError, ValueError, OSError):
        pass  # no such limit on this platform
    import importlib

    for module in preload:
        importlib.import_module(module)
    connection.send(("ready",))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, function, completion, example = message
        try:
            score = as_score(function(completion, example))
            reply = ("done", index, float(score), score.reason, score.failure)
        except BaseException as error:  # noqa: BLE001 - a reward's failure is one sample's 0, never the worker's end
            reply = ("done", index, 0.0, f"{type(error).__name__}: {str(error)[:200]}", EXCEPTION)
        connection.send(reply)


def default_workers() -> int:
    """min(4, CPU cores): reward calls are short, and more processes than cores only add memory."""
    return max(1, min(4, os.cpu_count() or 1))
