"""r1zero.tools.run_tool: one tool call as a rollout makes it, each way a program can end, with the text the model
would be shown; hostile programs are contained (the sandbox's own tests, tests/test_sandbox.py, go further)."""

import uuid

import pytest

from r1zero.rewards.sandbox import sandbox_capabilities
from r1zero.tools import STATUSES, ToolLimits, run_tool

QUICK = ToolLimits(wall_seconds=1.0)


def test_a_program_that_prints_shows_its_output():
    result = run_tool("python", "print(123 * 456)")
    assert (result.text, result.status, result.returncode) == ("56088\n", "ok", 0)
    assert run_tool("python", "x = 1").text == "(no output)\n"


def test_errors_show_what_was_printed_then_the_last_lines_of_the_traceback():
    result = run_tool("python", "print('before')\n1 / 0")
    assert result.status == "error" and result.returncode == 1
    assert result.text.startswith("before\n") and result.text.endswith("ZeroDivisionError: division by zero\n")
    assert len(result.text.splitlines()) == 1 + 5  # what it printed, then error_lines of the traceback
    syntax = run_tool("python", "print(")
    assert syntax.status == "error" and "SyntaxError" in syntax.text


def test_a_program_that_never_ends_is_stopped_at_its_time():
    result = run_tool("python", "print('started', flush=True)\nwhile True:\n    pass", QUICK)
    assert result.status == "timeout" and result.returncode is None and result.seconds >= 1.0
    assert result.text == "started\n(stopped: the program ran past 1 seconds)\n"


def test_unbounded_memory_and_output_hit_their_limits():
    memory = run_tool("python", "x = bytearray(8 * 2**30)")
    assert memory.status == "limit" and memory.text.rstrip().endswith("MemoryError")
    assert '  File "main.py", line 1, in <module>\n' in memory.text and "r1zero-sandbox-" not in memory.text
    flood = run_tool("python", "print('x' * 10_000_000)")  # 10 MB
    assert flood.status == "limit" and len(flood.text) <= QUICK.max_chars
    assert flood.text.endswith(f"(stopped: the output went past {64 * 2**10} bytes)\n")
    assert flood.text.startswith("x" * 100)


def test_a_fork_bomb_and_a_signal_are_contained():
    bomb = run_tool("python", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                    QUICK)
    assert bomb.status == "timeout"  # forks fail at the process cap; the survivors loop until the clock
    # (a SIGKILL it sends itself is ignored where it runs as its PID namespace's init; a fault is not)
    killed = run_tool("python", "import ctypes\nprint('bye', flush=True)\nctypes.string_at(0)")
    assert (killed.status, killed.text, killed.returncode) == ("killed", "bye\n(killed by SIGSEGV)\n", -11)


def test_files_outside_its_folder_and_the_network_are_out_of_reach(tmp_path):
    capabilities = sandbox_capabilities()
    if not (capabilities.writes_confined and capabilities.network_blocked):
        pytest.skip("writes or network are NOT confined on this machine (see sandbox_report)")
    target = tmp_path / f"escape-{uuid.uuid4().hex}"
    result = run_tool("python", f"open({str(target)!r}, 'w').write('escaped')")
    assert result.status == "error" and "PermissionError" in result.text and not target.exists()
    network = run_tool("python", "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert network.status == "error" and "Error" in network.text.splitlines()[-1]
    inside = run_tool("python", "open('scratch.txt', 'w').write('fine')\nprint(open('scratch.txt').read())")
    assert (inside.status, inside.text) == ("ok", "fine\n")  # its own folder is writable
    again = run_tool("python", "import os\nprint(os.path.exists('scratch.txt'))")
    assert again.text == "False\n"  # a fresh folder each call: nothing carries over


def test_every_status_is_named_and_an_unknown_tool_is_refused():
    assert STATUSES == ("ok", "error", "timeout", "killed", "limit")
    with pytest.raises(ValueError, match="tool 'bash' is not one of r1zero's tools: python"):
        run_tool("bash", "ls")
    cut = run_tool("python", "print('y' * 5000)", ToolLimits(max_chars=100))
    assert cut.text == "y" * 100 and cut.status == "ok"
