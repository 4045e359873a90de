"""The executor that runs inside a sandbox container (python3 standard library only).

It is started once per container through one `docker exec` and then serves every tool call over
its stdin/stdout, which costs milliseconds instead of a `docker exec` per call. Messages both ways
are frames: an ASCII length, a newline, then that many bytes of JSON. Command output travels
inside the JSON, escaped, so nothing a command prints can pass for a reply. Every request runs
in its own thread; every command runs in its own process group, so a timeout or a cancel kills
the whole tree. Paths are confined to the workspace: absolute paths, `..` and symlinks that
leave it are refused.

    python3 -u -c "$(cat executor_agent.py)" /workspace
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.realpath(sys.argv[1] if len(sys.argv) > 1 else "/workspace")
MAX_READ = 4 * 1024 * 1024
_out = threading.Lock()
_running = {}


class Refused(Exception):
    pass


def send(message):
    data = json.dumps(message, ensure_ascii=True).encode()
    with _out:
        sys.stdout.buffer.write(str(len(data)).encode() + b"\n" + data)
        sys.stdout.buffer.flush()


def resolve(rel):
    if not isinstance(rel, str) or "\0" in rel:
        raise Refused("a path must be a string")
    if rel.startswith("/") or rel.startswith("~"):
        raise Refused("paths are relative to the repository root; %r is absolute" % rel)
    path = os.path.normpath(os.path.join(ROOT, rel or "."))
    if path != ROOT and not path.startswith(ROOT + os.sep):
        raise Refused("%r is outside the repository" % rel)
    real = os.path.realpath(path)
    if real != ROOT and not real.startswith(ROOT + os.sep):
        raise Refused("%r leads outside the repository through a symbolic link" % rel)
    return real


def op_ping(req):
    return {"pid": os.getpid(), "root": ROOT}


def op_exec(req):
    """Run a shell command; `argv` instead of `cmd` runs a program without a shell."""
    timeout, cap = float(req.get("timeout", 120)), int(req.get("cap", 100000))
    argv = req.get("argv") or ["/bin/sh", "-c", req["cmd"]]
    cwd = resolve(req.get("cwd", "."))
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, **(req.get("env") or {})))
    _running[req["id"]] = proc
    kept, total, timed_out = [], 0, False
    fd = proc.stdout.fileno()
    try:
        while True:
            left = started + timeout - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            if total < cap:
                kept.append(chunk[: cap - total])
            total += len(chunk)
            if req.get("stream"):
                send({"id": req["id"], "chunk": chunk.decode("utf-8", "replace")})
    finally:
        _kill_group(proc)
        code = proc.wait()
        _sweep_group(proc.pid)
        _running.pop(req["id"], None)
    return {
        "exit_code": None if timed_out else code,
        "signal": -code if code < 0 and not timed_out else None,
        "output": b"".join(kept).decode("utf-8", "replace"),
        "truncated": total > cap,
        "total_bytes": total,
        "timed_out": timed_out,
        "duration": time.monotonic() - started,
    }


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and everything it started
    except (ProcessLookupError, PermissionError):
        pass


def _sweep_group(pgid):
    """Kill the group until it is empty: a process forked while the last signal went out (a fork
    bomb) survives one killpg. Bounded, in case PID 1 is slow to reap."""
    for _ in range(200):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.005)


def op_cancel(req):
    proc = _running.get(req["target"])
    if proc is not None:
        _kill_group(proc)
    return {"cancelled": proc is not None}


def op_read(req):
    path = resolve(req["path"])
    if os.path.isdir(path):
        raise Refused("%r is a directory" % req["path"])
    with open(path, "rb") as f:
        data = f.read(MAX_READ + 1)
    if b"\0" in data[:8192]:
        raise Refused("%r is a binary file" % req["path"])
    text = data[:MAX_READ].decode("utf-8", "replace")
    return {"content": text, "truncated": len(data) > MAX_READ}


def op_write(req):
    path = resolve(req["path"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = req["content"].encode("utf-8")
    with open(path, "wb") as f:
        f.write(data)
    return {"bytes": len(data)}


def op_edit(req):
    path = resolve(req["path"])
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    old, new = req["old"], req["new"]
    count = text.count(old) if old else 0
    if count == 0:
        raise Refused("the text to replace was not found in %r" % req["path"])
    if count > 1 and not req.get("replace_all"):
        raise Refused("the text to replace occurs %d times in %r; give more context or set replace_all" % (count, req["path"]))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new) if req.get("replace_all") else text.replace(old, new, 1))
    return {"replacements": count if req.get("replace_all") else 1}


def op_list(req):
    path = resolve(req.get("path", "."))
    entries = []
    for name in sorted(os.listdir(path))[:2000]:
        full = os.path.join(path, name)
        kind = "link" if os.path.islink(full) else "dir" if os.path.isdir(full) else "file"
        entries.append({"name": name, "type": kind, "size": os.path.getsize(full) if kind == "file" else None})
    return {"entries": entries}


def op_search(req):
    path = resolve(req.get("path", "."))
    rel = os.path.relpath(path, ROOT)
    if shutil.which("rg"):
        argv = ["rg", "--line-number", "--no-heading", "--color=never", "--max-count=50", "-e", req["pattern"], rel]
        if req.get("glob"):
            argv[1:1] = ["--glob", req["glob"]]
    else:
        argv = ["grep", "-rnIE", "--exclude-dir=.git", "-m", "50", "-e", req["pattern"], rel]
        if req.get("glob"):
            argv.insert(1, "--include=" + req["glob"])
    return op_exec({"id": req["id"], "argv": argv, "cwd": ".", "timeout": req.get("timeout", 30), "cap": req.get("cap", 50000)})


OPS = {"ping": op_ping, "exec": op_exec, "cancel": op_cancel, "read": op_read, "write": op_write,
       "edit": op_edit, "list": op_list, "search": op_search}


def handle(req):
    try:
        op = OPS.get(req.get("op"))
        if op is None:
            raise Refused("unknown operation %r" % req.get("op"))
        result = op(req)
        send({"id": req["id"], "ok": True, "result": result})
    except Refused as exc:
        send({"id": req.get("id"), "ok": False, "error": str(exc)})
    except FileNotFoundError as exc:
        send({"id": req.get("id"), "ok": False, "error": "no such file or directory: %s" % os.path.relpath(exc.filename or "?", ROOT)})
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        send({"id": req.get("id"), "ok": False, "error": "%s: %s" % (type(exc).__name__, exc)})


def main():
    stdin = sys.stdin.buffer
    while True:
        header = stdin.readline()
        if not header:
            return
        try:
            req = json.loads(stdin.read(int(header)))
        except ValueError:
            continue
        threading.Thread(target=handle, args=(req,), daemon=True).start()


if __name__ == "__main__":
    main()
