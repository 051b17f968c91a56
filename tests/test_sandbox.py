"""Hostile programs against r1zero.rewards.sandbox: each is contained, scores 0 with the code reward, leaves the
test process unharmed and no process behind, within bounded time.

    python -m pytest -s tests/test_sandbox.py      # -s prints the table of containment times at the end

Each program runs twice: once with run_python (its SandboxResult and containment time: start to the last process
killed and the directory deleted) and once through code_reward against a test expecting "42" (it must score 0).
"""

import os
import socket
import sys
import time
import uuid

import pytest

from r1zero.example import Example
from r1zero.rewards.code import code_reward
from r1zero.rewards.sandbox import SandboxLimits, run_python, sandbox_capabilities, sandbox_report

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's layers are Linux's")

WALL = 1.5  # seconds: the wall-clock limit of each measured run
BOUND = WALL + 20.0  # containment (kill, sweep, delete) must finish within this: it catches an escape that runs on
# (the hostile programs loop or sleep 60 s), with room for a loaded machine
LIMITS = SandboxLimits(wall_seconds=WALL)
EXAMPLE = Example(id="hostile", prompt="print 42", answer="", metadata={"tests": [{"input": "", "output": "42"}]})
CONTAINMENT_TIMES: list[tuple[str, str, float, str]] = []  # (program, how it ended, seconds, code reward reason)


@pytest.fixture(scope="module", autouse=True)
def print_containment_table():
    yield
    if CONTAINMENT_TIMES:
        print("\n\n" + sandbox_report())
        print(f"\n{'hostile program':<28} {'how it ended':<44} {'contained in':>12}  code reward")
        for name, outcome, seconds, reason in CONTAINMENT_TIMES:
            print(f"{name:<28} {outcome:<44} {seconds:>10.2f} s  0.0 ({reason})")


def stray_processes(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (every process of a run carries its workdir in argv)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if marker.encode() in cmdline.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that are not zombies (a zombie is dead; only its exit status waits for
    its parent, or the system's init, to collect it)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def run_hostile(name: str, code: str):
    """Run `code` in the sandbox, check the common containment promises, record the time, and score it."""
    started = time.monotonic()
    result = run_python(code, "", LIMITS)
    elapsed = time.monotonic() - started
    assert elapsed < BOUND, f"{name}: contained only after {elapsed:.1f} s"
    assert stray_processes(result.workdir) == [], f"{name}: processes left behind"
    assert live_group_members(result.pid) == [], f"{name}: its process group is still alive"
    assert not os.path.exists(result.workdir)  # the working directory is deleted
    score = code_reward(f"<answer>\n```python\n{code}\n```\n</answer>", EXAMPLE, test_timeout_seconds=1.0)
    assert score == 0.0
    if result.timed_out:
        outcome = "killed at the wall-clock limit"
    elif result.output_exceeded:
        outcome = "killed at the output limit"
    elif result.returncode is not None and result.returncode < 0:
        outcome = f"died of signal {-result.returncode}"
    else:
        last = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or [""])[-1]
        outcome = f"exit {result.returncode}: {last[:34]}"
    CONTAINMENT_TIMES.append((name, outcome, result.seconds, score.reason))
    return result, score


# ---------------------------------------------------------------------------------------------------------------
# Runaway time, processes, memory, output


def test_infinite_loop_is_killed_at_the_wall_clock_limit():
    result, score = run_hostile("infinite loop", "while True:\n    pass")
    assert result.timed_out and result.returncode is None
    assert WALL <= result.seconds < BOUND  # killed at the limit, not before
    assert score.reason == "tests failed 1/1 (test 1: timeout)" and score.failure == "timeout"


def test_sleep_past_the_timeout_is_killed():
    result, score = run_hostile("sleep 60 s", "import time\ntime.sleep(60)\nprint(42)")
    assert result.timed_out and result.stdout == ""
    assert score.reason == "tests failed 1/1 (test 1: timeout)"


def test_fork_bomb_is_capped_and_every_process_killed():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result, score = run_hostile("fork bomb", code)
    assert result.timed_out  # forks fail at the process cap; the survivors loop until the limit
    assert score.reason.startswith("tests failed 1/1 (test 1: timeout")


def test_child_that_leaves_the_process_group_with_setsid_dies_too():
    capabilities = sandbox_capabilities()
    if not (capabilities.namespaces or capabilities.pids_cgroup):
        pytest.skip("needs the PID namespace or the pids cgroup; NOT enforced on this machine (see sandbox_report)")
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
            "else:\n    print('parent exits, child in its own session')")
    result, score = run_hostile("setsid escape", code)
    assert result.returncode == 0 and not result.timed_out
    assert score.reason == "tests failed 1/1 (test 1: wrong output)"


def test_memory_bomb_fails_inside_the_sandbox():
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))"
    result, score = run_hostile("memory bomb (grow 50 MB)", code)
    # bytearray() zero-fills, so reaching the 512 MB limit takes about 0.4 s of page faults on an idle machine;
    # on a loaded one the clock may stop it first. Either way it is contained. (The two runs, the program and the
    # code reward's, are timed separately: under load either may be the one the clock stops.)
    if not result.timed_out:
        assert result.returncode == 1 and "MemoryError" in result.stderr
    assert score.reason in ("tests failed 1/1 (test 1: exit status 1: MemoryError)",
                            "tests failed 1/1 (test 1: timeout)")


def test_single_huge_allocation_fails():
    result, _ = run_hostile("memory bomb (one 8 GB)", "x = bytearray(8 * 2**30)")
    assert result.returncode == 1 and "MemoryError" in result.stderr


def test_huge_output_is_cut_at_the_cap():
    result, score = run_hostile("huge output", "while True:\n    print('x' * 65536)")
    assert result.output_exceeded and len(result.stdout) <= LIMITS.output_bytes
    assert not result.timed_out  # the cap, not the clock, ends it
    assert score.reason == "tests failed 1/1 (test 1: output over the limit)"


def test_deep_recursion_is_contained():
    # Python 3.11 runs Python-to-Python calls without C recursion, so with the limit raised this grows frames
    # until the memory limit or the clock stops it.
    code = "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)"
    result, _ = run_hostile("deep recursion", code)
    assert result.timed_out or (result.returncode not in (0, None))


def test_c_stack_overflow_crashes_only_the_sandbox():
    # repr() of a deeply nested list recurses in C; with the recursion limit raised the C stack overflows.
    code = "import sys\nsys.setrecursionlimit(10**7)\nx = []\nfor _ in range(10**5):\n    x = [x]\nprint(repr(x))"
    result, _ = run_hostile("C stack overflow (repr)", code)
    assert result.timed_out or result.returncode == -11  # SIGSEGV (about 1 s of CPU first), or the clock


# ---------------------------------------------------------------------------------------------------------------
# Escapes: files, environment, network, signals


def test_writing_outside_the_working_directory_fails(tmp_path):
    if not sandbox_capabilities().writes_confined:
        pytest.skip("writes are NOT confined on this machine (no Landlock; see sandbox_report)")
    marker = uuid.uuid4().hex
    targets = [str(tmp_path / f"escape-{marker}"), f"/tmp/r1zero-escape-{marker}", f"../r1zero-escape-{marker}"]
    code = "\n".join([
        "import os",
        f"for path in {targets!r}:",
        "    try:",
        "        with open(path, 'w') as f:",
        "            f.write('escaped')",
        "        print('wrote', path)",
        "    except OSError as e:",
        "        print('refused', path, e.errno)",
        "open('inside.txt', 'w').write('fine')",  # the working directory itself is writable
        "print(open('inside.txt').read())",
    ])
    result, _ = run_hostile("write outside workdir", code)
    assert "wrote" not in result.stdout and result.stdout.count("refused") == 3 and "fine" in result.stdout
    assert not (tmp_path / f"escape-{marker}").exists() and not os.path.exists(f"/tmp/r1zero-escape-{marker}")


def test_parent_environment_is_not_visible(monkeypatch):
    secret = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("R1ZERO_SANDBOX_SECRET", secret)
    code = "\n".join([
        "import os",
        "print(dict(os.environ))",
        f"for path in ['/proc/{os.getpid()}/environ', '/proc/1/environ', '/proc/self/environ']:",
        "    try:",
        "        print(open(path, 'rb').read())",
        "    except OSError as e:",
        "        print('refused', path, e.errno)",
    ])
    result, _ = run_hostile("read the parent's env", code)
    assert secret not in result.stdout and secret not in result.stderr
    assert "R1ZERO_SANDBOX_SECRET" not in result.stdout


def test_network_connection_cannot_reach_a_listening_port():
    if not sandbox_capabilities().network_blocked:
        pytest.skip("network is NOT blocked on this machine (no network namespace, no Landlock 4+)")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        code = "\n".join([
            "import socket",
            "try:",
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')",
            "    print('connected')",
            "except OSError as e:",
            "    print('refused', e.errno)",
        ])
        result, _ = run_hostile("connect to 127.0.0.1", code)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    assert "connected" not in result.stdout and "refused" in result.stdout


@pytest.mark.parametrize("target", ["os.getppid()", "TEST_PID", "-os.getpgid(TEST_PID)"])
def test_killing_the_parent_or_the_test_process_fails(target):
    if not sandbox_capabilities().signals_confined:
        pytest.skip("signals are NOT confined on this machine (no PID namespace, no Landlock 6+)")
    code = f"import os, signal\nTEST_PID = {os.getpid()}\nos.kill({target}, signal.SIGKILL)\nprint('sent')"
    result, _ = run_hostile(f"kill {target.replace('TEST_PID', 'test pid')}", code)
    # Reaching this line means the test process survived. Killing the test process by pid or process group
    # raises (no such process in the PID namespace, or EPERM from Landlock's signal scope). In a PID namespace
    # getppid() is 0 and kill(0) signals the sandbox's own process group, which is all it can reach.
    if target != "os.getppid()":
        assert "sent" not in result.stdout and ("ProcessLookupError" in result.stderr
                                                or "PermissionError" in result.stderr)


def test_a_normal_program_still_works():
    result = run_python("import sys\nprint(sum(map(int, sys.stdin.read().split())))", "1 2 3\n", LIMITS)
    assert (result.returncode, result.stdout, result.timed_out) == (0, "6\n", False)
