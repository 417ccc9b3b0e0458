"""Hostile programs against the sandbox: the harness must survive, record the failure and stay intact."""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from emreason.evals.sandbox import SandboxResult, run_python

FULL = "pid namespace" in run_python("pass").protections


def test_plain_program_with_stdin_and_stdout():
    result = run_python("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))", stdin="1 2 3\n")
    assert result.ok and result.stdout == "6\n"
    assert "rlimits" in result.protections


def test_exit_code_and_exception_are_reported():
    assert run_python("raise SystemExit(3)").returncode == 3
    crashed = run_python("raise ValueError('boom')")
    assert crashed.returncode == 1 and "ValueError: boom" in crashed.stderr


def test_infinite_loop_times_out_and_is_killed():
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout=1.0)
    assert result.timed_out and not result.ok
    assert time.monotonic() - start < 5


def test_sleeping_children_are_killed_with_the_group(tmp_path):
    marker = tmp_path / "alive"
    # A detached grandchild (own session) tries to outlive the run and then touch the harness's dir.
    source = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(3)\n"
        f"    open({str(marker)!r}, 'w').write('x')\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    result = run_python(source, timeout=1.0)
    assert result.timed_out
    time.sleep(3.5)
    assert not marker.exists()


def test_fork_bomb_is_contained():
    source = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_python(source, timeout=2.0, max_processes=8)
    assert not result.ok
    # The harness can still start programs afterwards.
    assert run_python("print('alive')").stdout == "alive\n"


def test_memory_bomb_fails_inside_the_sandbox():
    result = run_python("x = bytearray(4 * 1024**3)\nprint('allocated')", memory_mb=512)
    assert result.returncode != 0 and "MemoryError" in result.stderr
    assert "allocated" not in result.stdout


def test_printing_gigabytes_is_cut_off():
    source = "import sys\nline = 'x' * 65536\nwhile True:\n    sys.stdout.write(line)\n"
    result = run_python(source, timeout=20, max_output_bytes=1000, kill_output_bytes=4 * 1024 * 1024)
    assert result.output_limit_exceeded and not result.ok
    assert len(result.stdout) == 1000 and result.stdout_truncated
    assert result.wall_time_s < 15


def test_file_size_limit():
    result = run_python("open('big', 'wb').write(b'0' * (8 * 1024 * 1024))", file_mb=1)
    assert result.returncode != 0


def test_working_directory_is_private_and_writable():
    result = run_python("import os\nopen('f.txt','w').write('ok')\nprint(open('f.txt').read(), os.getcwd())")
    assert result.ok and result.stdout.startswith("ok ")


def test_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "owned.txt"
    target.write_text("original")
    os.chmod(tmp_path, 0o755)
    source = (
        "import os\nhits = []\n"
        f"for path in [{str(target)!r}, {str(tmp_path / 'new.txt')!r}, os.path.expanduser('~root/evil')]:\n"
        "    try:\n        open(path, 'w').write('pwned')\n        hits.append(path)\n"
        "    except OSError:\n        pass\n"
        "print(hits)\n"
    )
    result = run_python(source)
    assert target.read_text() == "original"
    assert not (tmp_path / "new.txt").exists()
    if FULL:
        assert result.stdout.strip() == "[]"


def test_cannot_read_the_harness_environment(monkeypatch):
    monkeypatch.setenv("EMREASON_TEST_SECRET", "hunter2")
    source = (
        "import os\nfound = 'hunter2' in str(os.environ)\n"
        "try:\n    found = found or b'hunter2' in open(f'/proc/{os.getppid()}/environ','rb').read()\n"
        "except OSError:\n    pass\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n        found = found or b'hunter2' in open(f'/proc/{pid}/environ','rb').read()\n"
        "    except OSError:\n        pass\n"
        "print('LEAK' if found else 'clean')\n"
    )
    result = run_python(source)
    assert result.ok
    assert result.stdout.strip() == "clean"


@pytest.mark.skipif(not FULL, reason="network namespaces are not permitted on this machine")
def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        source = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('blocked', type(exc).__name__)\n"
        )
        result = run_python(source)
    finally:
        server.close()
    assert result.stdout.startswith("blocked"), result


def test_cannot_kill_its_parent_or_the_harness():
    harness = os.getpid()
    source = (
        "import os, signal\n"
        "for pid in (os.getppid(), "
        f"{harness}, -1):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
        "print('tried')\n"
    )
    result = run_python(source)
    assert os.getpid() == harness  # we are still here
    assert isinstance(result, SandboxResult)
    assert run_python("print(1)").stdout == "1\n"


def test_concurrent_hostile_and_honest_programs_lose_no_results():
    hostile = [
        "while True: pass",
        "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
        "x = bytearray(8 * 1024**3)",
        "import sys\nwhile True: sys.stdout.write('y' * 65536)",
    ]
    honest = [f"print({i} * {i})" for i in range(8)]
    jobs = hostile + honest
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda s: run_python(s, timeout=2.0, max_processes=8), jobs))
    assert len(results) == len(jobs)
    assert all(not r.ok for r in results[: len(hostile)])
    assert [r.stdout for r in results[len(hostile) :]] == [f"{i * i}\n" for i in range(8)]


def test_bad_arguments_raise_early():
    with pytest.raises(TypeError, match="source"):
        run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        run_python("pass", timeout=0)


def test_a_sandbox_that_cannot_start_is_reported_as_such(monkeypatch):
    import emreason.evals.sandbox as sandbox

    monkeypatch.setattr(sandbox, "BOOTSTRAP", sandbox.BOOTSTRAP.with_name("missing_boot.py"))
    result = run_python("print(1)", start_attempts=2)
    assert not result.started and not result.ok
