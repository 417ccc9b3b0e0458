"""Sandbox bootstrap: runs as its own interpreter (``python -I -S``), isolates itself, then execs the program.

Started by :func:`emreason.evals.sandbox.run_python` only; it reads a JSON config file (argv[1]) written by
the harness. It uses nothing but the standard library so that it starts fast and never imports code the
sandboxed program could influence. Each protection is attempted and recorded; where the kernel refuses
one (no privileges, no user namespaces) the program still runs with the rest, and the harness reports
which protections were active.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
O_PATH = getattr(os, "O_PATH", 0o10000000)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], flags, enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _hidden_ancestors(path: str) -> list[str]:
    """Ancestors of ``path`` that other users cannot traverse (e.g. a 0700 /root)."""
    out, current = [], "/"
    for part in path.strip("/").split("/")[:-1]:
        current = os.path.join(current, part)
        try:
            mode = os.stat(current).st_mode
        except OSError:
            break
        if not mode & stat.S_IXOTH:
            out.append(current)
            break
    return out


def _setup_filesystem(cfg: dict, drop_uid: bool) -> tuple[str, list[str]]:
    """Private mounts: fresh /proc, tmpfs /tmp and /dev/shm, interpreter re-bound read-only."""
    done = []
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    if cfg["_pid_ns"]:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        done.append("private /proc")
    needed = [p for p in cfg["interpreter_paths"] if os.path.isdir(p)]
    overlays = {"/tmp"}
    if drop_uid:
        for path in needed:
            overlays.update(_hidden_ancestors(path))
    keep = [(p, os.open(p, O_PATH)) for p in needed if any(p.startswith(o + "/") for o in overlays)]
    size = f"size={int(cfg['tmpfs_mb'])}m"
    for overlay in sorted(overlays, key=len):
        mode = "1777" if overlay == "/tmp" else "0755"
        _mount("tmpfs", overlay, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode={mode}")
    done.append(f"tmpfs /tmp ({cfg['tmpfs_mb']} MiB)")
    if overlays - {"/tmp"}:
        done.append("hidden: " + ",".join(sorted(overlays - {"/tmp"})))
    for path, fd in keep:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        os.close(fd)
    if os.path.isdir("/dev/shm"):
        try:
            _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=1777")
            done.append("private /dev/shm")
        except OSError:
            pass
    workdir = "/tmp/work"
    os.makedirs(workdir, mode=0o755)
    return workdir, done


def _readonly_everything(except_prefix: str) -> bool:
    """Remount every mount read-only (used when the program keeps the harness's uid)."""
    with open("/proc/self/mountinfo") as handle:
        points = [line.split()[4] for line in handle]
    ok = True
    for point in sorted(set(points), key=len, reverse=True):
        if point == except_prefix or point.startswith(except_prefix + "/") or point.startswith("/proc"):
            continue
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        except OSError:
            ok = False
    return ok


def _set_limits(cfg: dict) -> None:
    cpu = int(cfg["cpu_seconds"])
    memory = int(cfg["memory_mb"]) * 1024 * 1024
    file_size = int(cfg["file_mb"]) * 1024 * 1024
    nproc = int(cfg["max_processes"]) + int(cfg.get("_nproc_offset", 0))
    limits = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_AS: (memory, memory),
        resource.RLIMIT_FSIZE: (file_size, file_size),
        resource.RLIMIT_NOFILE: (int(cfg["max_open_files"]),) * 2,
        resource.RLIMIT_NPROC: (nproc, nproc),
        resource.RLIMIT_CORE: (0, 0),
    }
    for kind, value in limits.items():
        resource.setrlimit(kind, value)


def _count_processes_of(uid: int) -> int:
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _run_program(cfg: dict, report_fd: int, protections: list[str]) -> None:
    """Finish isolation in this (already forked or not) process and exec the program. Never returns."""
    is_root = os.geteuid() == 0
    drop_uid = is_root and cfg["_mount_ns"]
    workdir = cfg["host_workdir"]
    if cfg["_mount_ns"]:
        try:
            workdir, done = _setup_filesystem(cfg, drop_uid)
            protections.extend(done)
        except OSError as exc:
            protections.append(f"mount setup failed: {exc}")
            drop_uid = False
            workdir = cfg["host_workdir"]
    with open(os.path.join(workdir, "main.py"), "wb") as handle:
        handle.write(cfg["_source"])
    stdin_path = os.path.join(workdir, ".stdin")
    with open(stdin_path, "wb") as handle:
        handle.write(cfg["_stdin"])
    if drop_uid:
        uid = int(cfg["sandbox_uid"])
        os.chown(workdir, uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        protections.append(f"unprivileged uid {uid}")
    elif cfg["_user_ns"] and cfg["_mount_ns"]:
        if _readonly_everything(workdir):
            protections.append("read-only filesystem outside workdir")
    if not drop_uid and not cfg["_pid_ns"]:
        # RLIMIT_NPROC counts every process of the uid; leave room for the ones that already exist.
        cfg["_nproc_offset"] = _count_processes_of(os.getuid())
    _set_limits(cfg)
    protections.append("rlimits")
    os.chdir(workdir)
    stdin_fd = os.open(stdin_path, os.O_RDONLY)
    os.dup2(stdin_fd, 0)
    os.close(stdin_fd)
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    parent = os.getppid()
    if cfg["_pid_ns"]:
        # Dies with the bootstrap parent, which takes the whole PID namespace with it.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(137)
    os.write(report_fd, (json.dumps(protections) + "\n").encode())
    os.close(report_fd)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    python = cfg["python"]
    os.execve(python, [python, "-I", "main.py"], env)


def main() -> None:
    with open(sys.argv[1]) as handle:
        cfg = json.load(handle)
    with open(cfg["source_path"], "rb") as handle:
        cfg["_source"] = handle.read()
    with open(cfg["stdin_path"], "rb") as handle:
        cfg["_stdin"] = handle.read()
    report_fd = int(cfg["report_fd"])
    protections: list[str] = ["own session/process group", "scrubbed environment"]
    uid, gid = os.getuid(), os.getgid()
    is_root = os.geteuid() == 0
    base = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    user = 0 if is_root else CLONE_NEWUSER
    cfg["_user_ns"] = cfg["_mount_ns"] = cfg["_pid_ns"] = False
    if cfg["isolate"]:
        if _unshare(base | CLONE_NEWPID | user):
            cfg["_mount_ns"] = cfg["_pid_ns"] = True
        elif _unshare(base | user):
            cfg["_mount_ns"] = True
        elif _unshare(CLONE_NEWNET | user):
            pass
        else:
            user = -1
        if user != -1:
            cfg["_user_ns"] = bool(user)
            protections.append("network namespace (no network)")
            if user:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"{uid} {uid} 1")
                _write("/proc/self/gid_map", f"{gid} {gid} 1")
                protections.append("user namespace")
            if cfg["_pid_ns"]:
                protections.append("pid namespace")
    if not cfg["_pid_ns"]:
        _run_program(cfg, report_fd, protections)
    child = os.fork()
    if child == 0:
        try:
            _run_program(cfg, report_fd, protections)
        except BaseException as exc:  # noqa: BLE001 - report any setup failure, then die
            os.write(2, f"sandbox setup failed: {exc!r}\n".encode())
            os._exit(126)
    os.close(report_fd)
    # Forward termination requests to the namespace's init; it takes every descendant with it.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        # Die of the same signal so the harness sees the program's fate, not a wrapper exit code.
        number = os.WTERMSIG(status)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
