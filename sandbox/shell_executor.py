"""The executor for images without python3: a loop in plain `sh`, driven from the host.

The host turns every operation into a short shell script; the loop in the container only runs
scripts. Request: `id length` on a line, then the script. Reply: `R id exit_code length` on a
line, then the output, so nothing a command prints can pass for a reply. The host keeps one
request in flight, which lets the loop read a script with `head -c` without swallowing the next.
Each script runs under `setsid timeout`, in its own process group; a cancel sends TERM to that
`timeout` through `docker exec`, and timeout passes it on to the whole group. It needs sh, head, wc, cat, rm, mktemp, setsid, timeout, realpath and
base64: coreutils and util-linux, or busybox.
"""

from __future__ import annotations

import asyncio
import base64
import posixpath
import shlex
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sandbox.executor import Connect, Executor, ExecutorError

ROOT = "/workspace"
REFUSED = 97  # the exit code of a script that refused a path

LOOP = r"""
while IFS=' ' read -r id len limit; do
  script=$(head -c "$len")
  out=$(mktemp)
  setsid timeout -k 1 "$limit" sh -c "$script" </dev/null >"$out" 2>&1 &
  echo "P $id $!"
  wait $!
  code=$?
  printf 'R %s %s %s\n' "$id" "$code" "$(wc -c <"$out" | tr -d ' ')"
  cat "$out"
  rm -f "$out"
done
"""


def confined(rel: str, var: str = "p") -> str:
    """Shell lines setting $var to the real path of `rel`, or refusing (exit 97) if it leaves the repo."""
    if not isinstance(rel, str) or "\0" in rel:
        raise ExecutorError("a path must be a string")
    if rel.startswith(("/", "~")):
        raise ExecutorError(f"paths are relative to the repository root; {rel!r} is absolute")
    joined = posixpath.normpath(posixpath.join(ROOT, rel or "."))
    if joined != ROOT and not joined.startswith(ROOT + "/"):
        raise ExecutorError(f"{rel!r} is outside the repository")
    return (
        f"{var}=$(realpath -m -- {shlex.quote(joined)}) || exit {REFUSED}\n"
        f'case "${var}" in {ROOT}|{ROOT}/*) ;; *) echo {shlex.quote(f"{rel!r} leads outside the repository through a symbolic link")}; exit {REFUSED};; esac\n'
    )


class ShellExecutor(Executor):
    def __init__(self, connect: Connect, alive: Callable[[], Awaitable[bool]], name: str,
                 kill_group: Callable[[int], Awaitable[None]]):
        super().__init__(connect, alive, name)
        self._kill_group = kill_group
        self._one_at_a_time = asyncio.Lock()
        self._pids: dict[int, int] = {}
        self._kills: set[asyncio.Task[None]] = set()

    async def request(self, op: str, on_chunk: Callable[[str], None] | None = None, **args: Any) -> dict[str, Any]:
        if op == "edit":  # read, replace here, write back
            text = (await self.request("read", path=args["path"]))["content"]
            count = text.count(args["old"]) if args["old"] else 0
            if count == 0:
                raise ExecutorError(f"the text to replace was not found in {args['path']!r}")
            if count > 1 and not args.get("replace_all"):
                raise ExecutorError(f"the text to replace occurs {count} times in {args['path']!r}; "
                                    "give more context or set replace_all")
            new = text.replace(args["old"], args["new"]) if args.get("replace_all") else text.replace(args["old"], args["new"], 1)
            await self.request("write", path=args["path"], content=new)
            return {"replacements": count if args.get("replace_all") else 1}
        script, timeout, cap = self._script(op, args)
        started = time.monotonic()
        async with self._one_at_a_time:
            reply = await super().request("sh", script=script, timeout=timeout)
        output: bytes = reply["output"]
        code: int = reply["code"]
        return self._result(op, code, output, cap, started, timeout, args)

    def _script(self, op: str, a: dict[str, Any]) -> tuple[str, float, int]:
        if op == "ping":
            return "echo ok", 10, 100
        if op == "exec":
            if a.get("argv"):
                command = " ".join(shlex.quote(x) for x in a["argv"])
            else:
                command = a["cmd"]
            return confined(a.get("cwd", "."), "d") + f'cd "$d" || exit {REFUSED}\n' + command, float(a.get("timeout", 120)), int(a.get("cap", 100_000))
        if op == "read":
            return confined(a["path"]) + f'[ -d "$p" ] && {{ echo "{a["path"]!r} is a directory"; exit {REFUSED}; }}\ncat -- "$p"', 60, 4 * 1024 * 1024
        if op == "write":
            data = base64.b64encode(a["content"].encode()).decode()
            return (confined(a["path"]) + 'mkdir -p -- "$(dirname -- "$p")" && '
                    f"printf %s {data} | base64 -d > \"$p\" && wc -c < \"$p\""), 60, 100
        if op == "list":
            return confined(a.get("path", ".")) + 'cd "$p" && ls -1Ap', 60, 1_000_000
        if op == "search":
            glob = f"--include={shlex.quote(a['glob'])} " if a.get("glob") else ""
            return (confined(a.get("path", ".")) + f"cd {ROOT} && grep -rnIE --exclude-dir=.git -m 50 {glob}"
                    f"-e {shlex.quote(a['pattern'])} -- \"$(realpath --relative-to={ROOT} \"$p\")\""), float(a.get("timeout", 30)), int(a.get("cap", 50_000))
        if op == "cancel":
            raise ExecutorError("cancel is done by killing the process group")
        raise ExecutorError(f"unknown operation {op!r}")

    def _result(self, op: str, code: int, output: bytes, cap: int, started: float, timeout: float, a: dict[str, Any]) -> dict[str, Any]:
        text = output[:cap].decode("utf-8", "replace")
        if op in ("exec", "search"):
            timed_out = code == 124 or (code == 137 and time.monotonic() - started >= timeout)
            return {"exit_code": None if timed_out else code, "signal": code - 128 if code > 128 and not timed_out else None,
                    "output": text, "truncated": len(output) > cap, "total_bytes": len(output), "timed_out": timed_out,
                    "duration": time.monotonic() - started}
        if code == REFUSED:
            raise ExecutorError(text.strip() or "refused")
        if code != 0:
            raise ExecutorError(text.strip().splitlines()[-1] if text.strip() else f"{op} failed (exit {code})")
        if op == "ping":
            return {"root": ROOT}
        if op == "read":
            if b"\0" in output[:8192]:
                raise ExecutorError(f"{a['path']!r} is a binary file")
            return {"content": text, "truncated": len(output) > cap}
        if op == "write":
            return {"bytes": int(text.strip() or 0)}
        entries = []
        for line in text.splitlines():
            entries.append({"name": line.rstrip("/"), "type": "dir" if line.endswith("/") else "file", "size": None})
        return {"entries": entries}

    # -- the wire: overrides of Executor ---------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        assert self._writer is not None
        if message["op"] == "cancel":
            pid = self._pids.get(message["target"])
            if pid:
                task = asyncio.get_running_loop().create_task(self._kill_group(pid))
                self._kills.add(task)
                task.add_done_callback(self._kills.discard)
            return
        script = message["script"].encode()
        self._writer.write(f"{message['id']} {len(script)} {max(1, round(message['timeout']))}\n".encode() + script)

    def _parse(self) -> None:
        while b"\n" in self._buffer:
            line, rest = self._buffer.split(b"\n", 1)
            fields = line.decode("ascii", "replace").split()
            if fields[:1] == ["P"] and len(fields) == 3:
                self._pids[int(fields[1])] = int(fields[2])
                self._buffer = rest
                continue
            if fields[:1] != ["R"] or len(fields) != 4:
                self._buffer = rest  # not ours: skip the line
                continue
            rid, code, size = int(fields[1]), int(fields[2]), int(fields[3])
            if len(rest) < size:
                return
            self._pids.pop(rid, None)
            self._dispatch({"id": rid, "ok": True, "result": {"code": code, "output": rest[:size]}})
            self._buffer = rest[size:]
