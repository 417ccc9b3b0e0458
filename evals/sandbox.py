"""Run untrusted Python programs (model-written code) in an isolated, resource-limited subprocess.

Each call of :func:`run_python` starts a fresh interpreter through ``_sandbox_boot.py``, which, where the
kernel permits, puts the program in new network, mount, PID, IPC and UTS namespaces; gives it a private
size-capped tmpfs ``/tmp`` as working directory, a fresh ``/proc`` showing only its own processes and
(when the harness runs as root) an unprivileged uid of its own, so it can neither write the harness's
files, read its environment nor signal its processes. Always: own session and process group, scrubbed
environment (``python -I``), rlimits on CPU time, address space, process count, file size and open files,
a wall-clock timeout, capped stdout/stderr, and a kill of the whole group. ``SandboxResult.protections``
lists what was actually active for that run.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BOOTSTRAP = Path(__file__).with_name("_sandbox_boot.py")
# Sandboxed programs run under uids from this range (root harness only); one per run, so the
# process-count limit and signal permissions never couple two concurrent programs.
_UID_BASE = 200_000
_UID_SPAN = 100_000


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run. ``returncode`` is negative when killed by a signal (-9: SIGKILL)."""

    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    wall_time_s: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    output_limit_exceeded: bool = False
    protections: tuple[str, ...] = field(default_factory=tuple)
    started: bool = True  # False: the sandbox itself failed before the program began (host trouble)

    @property
    def ok(self) -> bool:
        """Exited normally with status 0 within its limits."""
        return self.returncode == 0 and not self.timed_out and not self.output_limit_exceeded


def _interpreter_paths() -> list[str]:
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
    paths.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    return sorted(paths)


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def run_python(
    source: str,
    *,
    stdin: str = "",
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 16,
    file_mb: int = 16,
    max_open_files: int = 128,
    max_output_bytes: int = 64 * 1024,
    kill_output_bytes: int = 8 * 1024 * 1024,
    isolate: bool = True,
    start_attempts: int = 3,
) -> SandboxResult:
    """Run ``source`` as ``main.py`` under a fresh ``python -I`` in a sandbox; never raises for its faults.

    Args:
        source: Python program text.
        stdin: text fed on the program's standard input.
        timeout: wall-clock limit in seconds (CPU time is limited to the same, rounded up).
        memory_mb: address-space limit of every process (MiB).
        max_processes: process/thread limit (RLIMIT_NPROC).
        file_mb: largest file the program may write (MiB); also the size of its private /tmp.
        max_open_files: RLIMIT_NOFILE.
        max_output_bytes: bytes of stdout and of stderr kept in the result.
        kill_output_bytes: total output after which the program is killed (``output_limit_exceeded``).
        isolate: try namespaces (set False only to measure their cost).
        start_attempts: tries when the sandbox itself fails to start (e.g. the host is out of processes);
            such a failure is never charged to the program unless every attempt fails (``started=False``).
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be str, got {type(source).__name__}")
    if not isinstance(stdin, str):
        raise TypeError(f"stdin must be str, got {type(stdin).__name__}")
    for name, value in (
        ("timeout", timeout),
        ("memory_mb", memory_mb),
        ("max_processes", max_processes),
        ("file_mb", file_mb),
        ("max_open_files", max_open_files),
        ("max_output_bytes", max_output_bytes),
        ("kill_output_bytes", kill_output_bytes),
    ):
        _check_positive(name, value)
    for attempt in range(start_attempts):
        result = _run_once(
            source,
            stdin,
            timeout,
            memory_mb,
            max_processes,
            file_mb,
            max_open_files,
            max_output_bytes,
            kill_output_bytes,
            isolate,
        )
        if result.started or result.timed_out:
            return result
        time.sleep(0.5 * (attempt + 1))
    return result


def _run_once(
    source: str,
    stdin: str,
    timeout: float,
    memory_mb: int,
    max_processes: int,
    file_mb: int,
    max_open_files: int,
    max_output_bytes: int,
    kill_output_bytes: int,
    isolate: bool,
) -> SandboxResult:
    host_dir = tempfile.mkdtemp(prefix="emreason-sandbox-")
    report_r, report_w = os.pipe()
    try:
        source_path = os.path.join(host_dir, "source.py")
        stdin_path = os.path.join(host_dir, "stdin.txt")
        Path(source_path).write_text(source, encoding="utf-8")
        Path(stdin_path).write_text(stdin, encoding="utf-8")
        workdir = os.path.join(host_dir, "work")
        os.mkdir(workdir)
        config = {
            "source_path": source_path,
            "stdin_path": stdin_path,
            "host_workdir": workdir,
            "python": sys.executable,
            "interpreter_paths": _interpreter_paths(),
            "cpu_seconds": int(timeout) + 1,
            "memory_mb": int(memory_mb),
            "max_processes": int(max_processes),
            "file_mb": int(file_mb),
            "tmpfs_mb": int(file_mb) * 2,
            "max_open_files": int(max_open_files),
            "sandbox_uid": _UID_BASE + int.from_bytes(os.urandom(4), "little") % _UID_SPAN,
            "report_fd": report_w,
            "isolate": bool(isolate),
        }
        config_path = os.path.join(host_dir, "config.json")
        Path(config_path).write_text(json.dumps(config), encoding="utf-8")
        start = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(BOOTSTRAP), config_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(report_w,),
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd=host_dir,
        )
        os.close(report_w)
        report_w = -1
        out, err, timed_out, flooded = _collect(process, timeout, max_output_bytes, kill_output_bytes)
        wall = time.monotonic() - start
        protections = _read_report(report_r)
        return SandboxResult(
            returncode=process.returncode,
            timed_out=timed_out,
            stdout=out[0].decode("utf-8", "replace"),
            stderr=err[0].decode("utf-8", "replace"),
            wall_time_s=wall,
            stdout_truncated=out[1],
            stderr_truncated=err[1],
            output_limit_exceeded=flooded,
            protections=tuple(protections),
            started=bool(protections),
        )
    finally:
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)
        shutil.rmtree(host_dir, ignore_errors=True)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect(
    process: subprocess.Popen, timeout: float, keep: int, kill_at: int
) -> tuple[tuple[bytes, bool], tuple[bytes, bool], bool, bool]:
    """Read both pipes until EOF, the deadline or the output flood limit; kill the group on either limit."""
    buffers = {"out": bytearray(), "err": bytearray()}
    truncated = {"out": False, "err": False}
    total = 0
    deadline = time.monotonic() + timeout
    timed_out = flooded = False
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, "out")
    selector.register(process.stderr, selectors.EVENT_READ, "err")
    open_streams = 2
    killed_at = None
    while open_streams:
        now = time.monotonic()
        if killed_at is None and now >= deadline:
            timed_out = True
            _kill_group(process)
            killed_at = now
        if killed_at is not None and now - killed_at > 2.0:
            break  # an escaped descendant keeps a pipe open: stop waiting for it
        wait = max(0.0, (deadline - now) if killed_at is None else 0.1)
        for key, _ in selector.select(timeout=min(wait, 0.5)):
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                open_streams -= 1
                continue
            total += len(chunk)
            buffer = buffers[key.data]
            room = keep - len(buffer)
            if room > 0:
                buffer.extend(chunk[:room])
            if len(chunk) > max(room, 0):
                truncated[key.data] = True
            if killed_at is None and total > kill_at:
                flooded = True
                _kill_group(process)
                killed_at = time.monotonic()
    selector.close()
    process.stdout.close()
    process.stderr.close()
    try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()) if killed_at is None else 5)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
        process.wait()
    # The group leader is gone; make sure nothing of its group outlives the call.
    _kill_group(process)
    return (
        (bytes(buffers["out"]), truncated["out"]),
        (bytes(buffers["err"]), truncated["err"]),
        timed_out,
        flooded,
    )


def _read_report(fd: int) -> list[str]:
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return []
    try:
        return json.loads(data.decode().splitlines()[0]) if data else []
    except (ValueError, IndexError):
        return []


def active_protections() -> tuple[str, ...]:
    """The protections a trivial program gets on this machine (for reports and docs)."""
    return run_python("pass", timeout=10).protections
