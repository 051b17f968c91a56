"""Run untrusted Python (model-written code) with hard limits, and say exactly what is enforced.

    result = run_python("print(int(input()) * 2)", stdin="21\\n", limits=SandboxLimits(wall_seconds=2))
    result.stdout, result.returncode, result.timed_out      # ('42\\n', 0, False)
    print(sandbox_report())                                 # the layers this machine enforces

Layers, each applied where the platform allows it (`sandbox_capabilities()` probes once per process):

  always      a new session and process group (start_new_session), killed as a whole (SIGKILL) at the wall-clock
              limit and again after every run; resource limits set in preexec_fn: RLIMIT_CPU, RLIMIT_AS (memory),
              RLIMIT_FSIZE (file size), RLIMIT_NPROC (processes), RLIMIT_NOFILE, RLIMIT_CORE 0; a fresh temporary
              working directory, deleted afterwards; an empty environment; `python -I -S -B` (isolated mode: no
              PYTHON* variables, no user site, no site-packages, so only the standard library); stdout and stderr
              read up to `output_bytes` each (more kills the run); PR_SET_PDEATHSIG, so the program is killed if
              the process that started it dies.
  namespaces  `unshare --pid --net --fork --kill-child` (util-linux; needs root or unprivileged user
              namespaces): a network namespace with no interfaces up, so no network at all, not even 127.0.0.1;
              a PID namespace, so the program cannot signal (or see by pid) any process outside it, and every
              process it started dies with it, even ones that left its process group with setsid().
  landlock    Linux Landlock (kernel 5.13+, no privileges needed): writes only inside the working directory (and
              to /dev/null); reads and execution only of the Python installation, system libraries and the working
              directory, so no home directory, /proc or /etc secrets; on ABI 4+ no TCP connect or bind; on ABI 6+
              no signals to processes outside the sandbox and no abstract UNIX sockets.
  cgroup      a pids cgroup (cgroup v1 /sys/fs/cgroup/pids, root only) capping the number of processes, which
              RLIMIT_NPROC does not do for root (the kernel exempts root from it), and listing every process of
              the run so all are killed at the end.

Not enforced, anywhere: CPU time across processes beyond RLIMIT_CPU per process, total memory across processes
(RLIMIT_AS is per process; the cgroup caps their number), disk use inside the working directory beyond
RLIMIT_FSIZE per file, time spent in uninterruptible kernel calls. Without the namespaces and Landlock (macOS,
old kernels, containers that forbid both) network is NOT blocked, files the user can write are writable, and a
program can signal other processes of the same user: `sandbox_report()` says so. This is defence in depth for
rewards, not a security boundary for hostile code at scale; run such training inside a container or VM too.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import itertools
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# ---------------------------------------------------------------------------------------------------------------
# Limits and results


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run; the defaults suit short test programs."""

    wall_seconds: float = 2.0  # wall-clock limit; the whole process group is killed at it
    cpu_seconds: int = 0  # RLIMIT_CPU per process (0: the wall limit rounded up)
    memory_bytes: int = 512 * 2**20  # RLIMIT_AS per process
    file_size_bytes: int = 2**20  # RLIMIT_FSIZE: largest file the program may write
    processes: int = 32  # RLIMIT_NPROC (non-root) and the pids cgroup (root)
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 2**20  # stdout and stderr are each read up to this; more kills the run


@dataclass
class SandboxResult:
    """What a run did. returncode is negative for a signal (-9: killed), None if it never exited on its own."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool  # hit wall_seconds
    output_exceeded: bool  # wrote more than output_bytes to stdout or stderr
    seconds: float  # wall-clock time from start to the last process killed and the directory deleted
    workdir: str  # the temporary directory (deleted when run_python returns)
    pid: int  # the first process, leader of the run's process group (gone when run_python returns)


@dataclass(frozen=True)
class SandboxCapabilities:
    """Which layers this machine enforces (see the module docstring)."""

    namespaces: bool  # PID and network namespaces through `unshare`
    landlock_abi: int  # 0: no Landlock
    landlock_reads: bool  # Landlock restricts reads too (probed: Python starts under the read rules)
    pids_cgroup: bool
    root: bool

    @property
    def network_blocked(self) -> bool:
        return self.namespaces or self.landlock_abi >= 4  # Landlock 4+ blocks TCP only

    @property
    def writes_confined(self) -> bool:
        return self.landlock_abi >= 1

    @property
    def signals_confined(self) -> bool:
        return self.namespaces or self.landlock_abi >= 6


# ---------------------------------------------------------------------------------------------------------------
# Running a program


def run_python(code: str, stdin: str = "", limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as a Python program under every available layer; stdin is fed from a file.

    >>> run_python("print(6 * 7)").stdout  # doctest: +SKIP
    '42\\n'
    """
    capabilities = sandbox_capabilities()
    return _run(code, stdin, limits, capabilities, restrict_reads=capabilities.landlock_reads)


def _run(code: str, stdin: str, limits: SandboxLimits, capabilities: SandboxCapabilities,
         restrict_reads: bool) -> SandboxResult:
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="r1zero-sandbox-")
    result = None
    cgroup = None
    process = None
    ruleset_fd = -1
    try:
        program = Path(workdir, "main.py")
        program.write_text(code, encoding="utf-8", errors="surrogatepass")
        Path(workdir, "stdin.txt").write_text(stdin, encoding="utf-8", errors="surrogatepass")
        argv = [sys.executable, "-I", "-S", "-B", str(program)]
        if capabilities.namespaces:
            argv = [*_unshare_argv(capabilities.root), *argv]
        if capabilities.pids_cgroup:
            cgroup = _PidsCgroup.create(limits.processes)
        if capabilities.landlock_abi:
            ruleset_fd = _landlock_ruleset(capabilities.landlock_abi, workdir, restrict_reads)
        nproc = limits.processes if capabilities.root else _user_task_count() + limits.processes
        setup = _ChildSetup(limits, nproc, cgroup.procs_file if cgroup else None, ruleset_fd)
        with open(Path(workdir, "stdin.txt"), "rb") as stdin_file:
            process = subprocess.Popen(argv, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       cwd=workdir, env={}, start_new_session=True, preexec_fn=setup)
        if ruleset_fd >= 0:
            os.close(ruleset_fd)
            ruleset_fd = -1
        stdout, stderr, timed_out, exceeded = _collect_output(process, started + limits.wall_seconds,
                                                              limits.output_bytes)
        _kill_run(process)
        try:
            returncode = process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:  # unkillable for now (uninterruptible sleep): reported as killed
            returncode = None
        if timed_out or exceeded:
            returncode = None  # killed by the sandbox, not exited on its own
        result = SandboxResult(returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"),
                               timed_out, exceeded, 0.0, workdir, process.pid)
    finally:
        if process is not None:
            _kill_group(process.pid)
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        if ruleset_fd >= 0:
            os.close(ruleset_fd)
        if cgroup is not None:
            cgroup.kill_all_and_remove()
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def _collect_output(process: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout and stderr until both close, the deadline passes or one exceeds `cap` bytes."""
    buffers = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray()}
    timed_out = exceeded = False
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if process.poll() is not None:
                # The program exited: kill what it left behind in its group (they may hold the pipes open) and
                # read only what is already there.
                _kill_group(process.pid)
                remaining = min(remaining, 0.05)
            events = selector.select(timeout=remaining)
            if not events and process.poll() is not None:
                break
            for key, _ in events:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffers[key.fd] += chunk
                if len(buffers[key.fd]) > cap:
                    exceeded = True
            if exceeded:
                break
    out, err = (bytes(buffers[process.stdout.fileno()][:cap]), bytes(buffers[process.stderr.fileno()][:cap]))
    return out, err, timed_out, exceeded


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_run(process: subprocess.Popen) -> None:
    """Kill the program first, then its process group. With namespaces the started process is the `unshare`
    wrapper and the program its only child (init of the PID namespace, whose death kills the namespace): killed
    first, it is reaped by the wrapper instead of lingering as a zombie for the system's init to collect."""
    if process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/task/{process.pid}/children") as children:
                for child in children.read().split():
                    os.kill(int(child), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        try:
            process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(process.pid)


def _user_task_count() -> int:
    """Processes and threads of this user (what RLIMIT_NPROC counts), read from /proc; 0 where there is none."""
    uid, count = os.getuid(), 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as status:
                fields = dict(line.split(b":", 1) for line in status.read().splitlines() if b":" in line)
            if int(fields[b"Uid"].split()[0]) == uid:
                count += int(fields[b"Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return count


# ---------------------------------------------------------------------------------------------------------------
# In the child, between fork and exec


class _ChildSetup:
    """preexec_fn: resource limits, the pids cgroup, death signal, Landlock. Runs in the forked child, so it only
    calls what was prepared in the parent (no imports, no allocation-heavy work)."""

    def __init__(self, limits: SandboxLimits, nproc: int, cgroup_procs: str | None, ruleset_fd: int):
        cpu = limits.cpu_seconds or max(1, math.ceil(limits.wall_seconds))
        self.rlimits = [
            (resource.RLIMIT_CPU, (cpu, cpu + 1)),
            (resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)),
            (resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes)),
            (resource.RLIMIT_NPROC, (nproc, nproc)),
            (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
            (resource.RLIMIT_CORE, (0, 0)),
        ]
        self.cgroup_procs = cgroup_procs
        self.ruleset_fd = ruleset_fd
        self.libc = _libc()

    def __call__(self) -> None:
        if self.cgroup_procs is not None:
            with open(self.cgroup_procs, "w") as procs:
                procs.write(str(os.getpid()))
        for limit, values in self.rlimits:
            resource.setrlimit(limit, values)
        if self.libc is not None:
            self.libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if self.ruleset_fd >= 0:
            if self.libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
            if self.libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, self.ruleset_fd, 0) != 0:
                raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")


# ---------------------------------------------------------------------------------------------------------------
# Landlock (linux/landlock.h). The syscall numbers are the same on every architecture (added after the tables
# were unified).

_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_REMOVE_DIR, _REMOVE_FILE, _MAKE_CHAR, _MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_MAKE_REG, _MAKE_SOCK, _MAKE_FIFO, _MAKE_BLOCK, _MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
_REFER, _TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE  # the rights a rule on a non-directory may hold


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        return libc
    except OSError:
        return None


def _landlock_abi() -> int:
    libc = _libc()
    if libc is None:
        return 0
    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                       ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return max(0, abi)


def _write_rights(abi: int) -> int:
    rights = (_WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_CHAR | _MAKE_DIR | _MAKE_REG | _MAKE_SOCK
              | _MAKE_FIFO | _MAKE_BLOCK | _MAKE_SYM)
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    return rights


@cache
def _readable_paths() -> tuple[str, ...]:
    """What a sandboxed Python needs to read and execute: its installation, the directories of every shared
    library mapped into this process (libc, libpython, ...), the unshare binary, system library directories,
    the dynamic loader's cache, and the random and null devices."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             str(Path(sys.executable).resolve().parent), os.path.dirname(sys.executable)}
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/") and ".so" in parts[5]:
                    paths.add(os.path.dirname(parts[5].strip()))
    except OSError:
        pass
    unshare = shutil.which("unshare")
    if unshare:
        paths.add(os.path.dirname(os.path.realpath(unshare)))
    for candidate in ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/etc/ld.so.cache",
                      "/etc/localtime", "/dev/urandom", "/dev/random", "/dev/null", "/dev/zero"):
        paths.add(candidate)
    return tuple(sorted(p for p in paths if p and os.path.exists(p)))


def _landlock_ruleset(abi: int, workdir: str, restrict_reads: bool) -> int:
    """A Landlock ruleset fd: writes only under workdir (and /dev/null); reads and execution only of
    _readable_paths() and workdir when restrict_reads; no TCP (ABI 4+); signals and abstract UNIX sockets
    scoped to the sandbox (ABI 6+)."""
    libc = _libc()
    write = _write_rights(abi)
    read = _EXECUTE | _READ_FILE | _READ_DIR
    attr = _RulesetAttr(handled_access_fs=write | (read if restrict_reads else 0))
    size = 8
    if abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24
    ruleset_fd = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                              ctypes.c_uint32(0))
    if ruleset_fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    rules = {workdir: write | _READ_FILE | _READ_DIR, "/dev/null": _WRITE_FILE | _READ_FILE}
    if restrict_reads:
        for path in _readable_paths():
            rules[path] = rules.get(path, 0) | read
    handled = attr.handled_access_fs
    try:
        for path, rights in rules.items():
            _add_path_rule(libc, ruleset_fd, path, rights & handled)
    except BaseException:
        os.close(ruleset_fd)
        raise
    return ruleset_fd


def _add_path_rule(libc, ruleset_fd: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path that disappeared grants nothing
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        if not rights:
            return
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule),
                        ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------
# Namespaces and the pids cgroup


def _unshare_argv(root: bool) -> list[str]:
    argv = [shutil.which("unshare") or "unshare"]
    if not root:
        argv.append("--user")  # an unprivileged user namespace makes the other namespaces possible
    return [*argv, "--pid", "--net", "--fork", "--kill-child"]


_PIDS_CGROUP_ROOT = Path("/sys/fs/cgroup/pids")


class _PidsCgroup:
    """A cgroup v1 pids group of one run: caps its processes and lists them all for the final kill."""

    numbers = itertools.count(1)  # next() on a count is atomic under the GIL: two threads never share a name

    def __init__(self, path: Path):
        self.path = path
        self.procs_file = str(path / "cgroup.procs")

    @classmethod
    def create(cls, max_processes: int) -> "_PidsCgroup":
        path = _PIDS_CGROUP_ROOT / f"r1zero-sandbox-{os.getpid()}-{next(cls.numbers)}"
        path.mkdir()
        (path / "pids.max").write_text(str(max_processes))
        return cls(path)

    def kill_all_and_remove(self) -> None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                pids = [int(p) for p in Path(self.procs_file).read_text().split()]
            except OSError:
                return
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
        try:
            self.path.rmdir()
        except OSError:
            pass  # still busy (a process in uninterruptible sleep): left for the kernel, named r1zero-sandbox-*


# ---------------------------------------------------------------------------------------------------------------
# Probing what this machine allows (once per process)


@cache
def sandbox_capabilities() -> SandboxCapabilities:
    """Probe each layer by running a trivial program under it; a layer that fails to start is left out."""
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    bare = SandboxCapabilities(namespaces=False, landlock_abi=0, landlock_reads=False, pids_cgroup=False, root=root)
    if not sys.platform.startswith("linux"):
        return bare

    def works(capabilities: SandboxCapabilities, restrict_reads: bool = False) -> bool:
        try:
            result = _run("print(6 * 7)", "", SandboxLimits(wall_seconds=10), capabilities, restrict_reads)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0 and result.stdout == "42\n"

    namespaces = shutil.which("unshare") is not None and works(dataclasses.replace(bare, namespaces=True))
    pids_cgroup = False
    if root and _PIDS_CGROUP_ROOT.is_dir():
        try:
            _PidsCgroup.create(4).kill_all_and_remove()
            pids_cgroup = works(dataclasses.replace(bare, pids_cgroup=True))
        except OSError:
            pids_cgroup = False
    abi = _landlock_abi()
    landlock = abi if abi and works(dataclasses.replace(bare, landlock_abi=abi)) else 0
    reads = bool(landlock) and works(dataclasses.replace(bare, landlock_abi=landlock), restrict_reads=True)
    return SandboxCapabilities(namespaces=namespaces, landlock_abi=landlock, landlock_reads=reads,
                               pids_cgroup=pids_cgroup, root=root)


def sandbox_report() -> str:
    """One line per protection: enforced here or NOT, in words."""
    capabilities = sandbox_capabilities()

    def line(enforced: bool, text: str) -> str:
        return f"  [{'enforced' if enforced else 'NOT enforced'}] {text}"

    return "\n".join([
        "r1zero sandbox on this machine:",
        line(True, "own process group, killed at the wall-clock limit; resource limits (CPU, memory, file size, "
                   "open files, no core dumps); empty environment; python -I -S; temporary working directory"),
        line(not capabilities.root, "RLIMIT_NPROC process cap (the kernel exempts root)"),
        line(capabilities.pids_cgroup, "pids cgroup process cap and kill of every process of the run"),
        line(capabilities.network_blocked, "no network" + ("" if capabilities.namespaces else
                                                           " (TCP only: Landlock without a network namespace)")),
        line(capabilities.signals_confined, "no signals to processes outside the sandbox"),
        line(capabilities.namespaces, "every process started by the program dies with it (PID namespace)"),
        line(capabilities.writes_confined, "writes only inside the working directory"),
        line(capabilities.landlock_reads, "reads only of the Python installation, system libraries and the "
                                          "working directory"),
    ])
