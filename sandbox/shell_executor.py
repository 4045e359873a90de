"""The executor for images without a usable python3: a loop in plain `sh`, driven from the host.

The host turns every request into a short shell script in which every value from a request is
quoted; the loop in the container only runs scripts. Request: `id length limit cap user` on a
line, then the script. Reply: `R id exit_code total sent` on a line, then the first `sent` bytes
of the output, so nothing a command prints can pass for a reply, and no output is larger than
its cap on the wire. The host keeps one request in flight, which lets the loop read a script
with `head -c` without swallowing the next.

The loop runs as root; scripts run as the sandbox user (`setpriv`), each under `setsid timeout`
in its own process group, with /dev/null and a private output file as their only descriptors.
A cancel sends TERM to that `timeout` through `docker exec`, and timeout passes it on to the
whole group. It needs sh, head, wc, cat, rm, mktemp, stat, chown, setsid, setpriv, timeout,
realpath and base64: coreutils and util-linux, or busybox.
"""

from __future__ import annotations

import asyncio
import base64
import posixpath
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel

from sandbox.executor import Connect, Connection, Executor, ExecutorError
from sandbox.framing import ProtocolError
from sandbox.protocol import (
    SANDBOX_HOME,
    SANDBOX_UID,
    WORKSPACE,
    Cancel,
    Edit,
    EditResult,
    Exec,
    ListDir,
    ListResult,
    Ping,
    PingResult,
    Read,
    Request,
    Search,
    Write,
    WriteResult,
)
from sandbox.workspace import CommandResult, DirEntry, FileText

ROOT = WORKSPACE
REFUSED = 97  # the exit code of a script that refused a path
R = TypeVar("R", bound=BaseModel)
_ID = SANDBOX_UID

LOOP = rf"""
export HOME={SANDBOX_HOME}
command -v setpriv >/dev/null || {{ echo "setpriv is missing: the sandbox user cannot be used" >&2; exit 1; }}
mkdir -p {ROOT} "$HOME" || exit 1
cut -d: -f3 /etc/passwd | grep -qx {_ID} || echo "sandbox:x:{_ID}:{_ID}::$HOME:/bin/sh" >>/etc/passwd
cut -d: -f3 /etc/group | grep -qx {_ID} || echo "sandbox:x:{_ID}:" >>/etc/group
[ "$(stat -c %u "$HOME")" = {_ID} ] || {{ chown {_ID}:{_ID} "$HOME" && chmod 700 "$HOME"; }} || exit 1
[ "$(stat -c %u {ROOT})" = {_ID} ] || chown -R {_ID}:{_ID} {ROOT} || exit 1
while IFS=' ' read -r id len limit cap who; do
  script=$(head -c "$len")
  out=$(mktemp)
  if [ "$who" = root ]; then
    setsid timeout -k 1 "$limit" sh -c "$script" </dev/null >"$out" 2>&1 &
  else
    setsid timeout -k 1 "$limit" setpriv --reuid={_ID} --regid={_ID} --clear-groups sh -c "$script" </dev/null >"$out" 2>&1 &
  fi
  echo "P $id $!"
  wait $!
  code=$?
  size=$(wc -c <"$out" | tr -d ' ')
  printf 'R %s %s %s %s\n' "$id" "$code" "$size" "$(( size < cap ? size : cap ))"
  head -c "$cap" "$out"
  rm -f "$out"
done
"""


@dataclass(frozen=True)
class _Output:
    code: int
    data: bytes
    total: int


def confined(rel: str, var: str = "p") -> str:
    """Shell lines setting $var to the real path of `rel`, or refusing (exit 97) if it leaves the repo."""
    if not isinstance(rel, str) or "\0" in rel:
        raise ExecutorError("a path must be a string")
    if rel.startswith(("/", "~")):
        raise ExecutorError(f"paths are relative to the repository root; {rel!r} is absolute")
    joined = posixpath.normpath(posixpath.join(ROOT, rel or "."))
    if joined != ROOT and not joined.startswith(ROOT + "/"):
        raise ExecutorError(f"{rel!r} is outside the repository")
    escaped = shlex.quote(f"{rel!r} leads outside the repository through a symbolic link")
    return (
        f"{var}=$(realpath -m -- {shlex.quote(joined)}) || exit {REFUSED}\n"
        f'case "${var}" in {ROOT}|{ROOT}/*) ;; *) printf "%s\\n" {escaped}; exit {REFUSED};; esac\n'
    )


def _refuse_if(test: str, message: str) -> str:
    return f'if {test}; then printf "%s\\n" {shlex.quote(message)}; exit {REFUSED}; fi\n'


class ShellExecutor(Executor):
    def __init__(self, connect: Connect, alive: Callable[[], Awaitable[bool]], name: str,
                 kill_group: Callable[[int], Coroutine[Any, Any, None]]):
        super().__init__(connect, alive, name)
        self._kill_group = kill_group
        self._one_at_a_time = asyncio.Lock()
        self._pids: dict[int, int] = {}
        self._kills: set[asyncio.Task[None]] = set()

    async def call(self, request: Request[R]) -> R:
        if isinstance(request, Edit):
            return cast(R, await self._edit(request))
        if isinstance(request, Cancel):
            raise ExecutorError("cancel is done by killing the process group")
        script, limit, cap, as_root = self._script(request)
        started = time.monotonic()
        line = f"{limit} {cap} {'root' if as_root else 'sandbox'}"
        data = script.encode()
        async with self._one_at_a_time:
            out: _Output = await self._roundtrip(request, lambda rid: f"{rid} {len(data)} {line}\n".encode() + data)
        return cast(R, self._result(request, out, cap, started, limit))

    async def _edit(self, request: Edit) -> EditResult:
        """Read, replace here, write back."""
        text = (await self.call(Read(path=request.path))).content
        count = text.count(request.old) if request.old else 0
        if count == 0:
            raise ExecutorError(f"the text to replace was not found in {request.path!r}")
        if count > 1 and not request.replace_all:
            raise ExecutorError(f"the text to replace occurs {count} times in {request.path!r}; "
                                "give more context or set replace_all")
        new = text.replace(request.old, request.new, -1 if request.replace_all else 1)
        await self.call(Write(path=request.path, content=new))
        return EditResult(replacements=count if request.replace_all else 1)

    def _script(self, r: Request[Any]) -> tuple[str, int, int, bool]:
        """The script for a request, its time limit in seconds, its output cap, and whether it runs as root."""
        if isinstance(r, Ping):
            return "echo ok", 10, 100, False
        if isinstance(r, Exec):
            env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in r.env.items() if _NAME.match(k))
            command = shlex.join(r.argv) if r.argv else r.cmd or "true"
            return (confined(r.cwd, "d") + f'cd "$d" || exit {REFUSED}\n' + env + command,
                    max(1, round(r.timeout)), r.cap, r.as_root)
        if isinstance(r, Read):
            return (confined(r.path) + _refuse_if('[ -d "$p" ]', f"{r.path!r} is a directory") + 'cat -- "$p"',
                    60, 4 * 1024 * 1024, False)
        if isinstance(r, Write):
            data = base64.b64encode(r.content.encode()).decode()
            return (confined(r.path) + 'mkdir -p -- "$(dirname -- "$p")" && '
                    f'printf %s {data} | base64 -d > "$p" && wc -c < "$p"'), 60, 100, False
        if isinstance(r, ListDir):
            return confined(r.path) + 'cd -- "$p" && ls -1Ap', 60, 1_000_000, False
        if isinstance(r, Search):
            glob = f"--include={shlex.quote(r.glob)} " if r.glob else ""
            script = (confined(r.path) + f"cd {ROOT} && grep -rnIE --exclude-dir=.git -m 50 {glob}"
                      f'-e {shlex.quote(r.pattern)} -- "$(realpath --relative-to={ROOT} -- "$p")"')
            return script, max(1, round(r.timeout)), r.cap, False
        raise ExecutorError(f"unknown operation {type(r).__name__}")

    def _result(self, r: Request[Any], out: _Output, cap: int, started: float, limit: float) -> BaseModel:
        text = out.data.decode("utf-8", "replace")
        code = out.code
        if isinstance(r, Exec | Search):
            timed_out = code == 124 or (code == 137 and time.monotonic() - started >= limit)
            return CommandResult(exit_code=None if timed_out else code,
                                 signal=code - 128 if code > 128 and not timed_out else None,
                                 output=text, truncated=out.total > cap, total_bytes=out.total, timed_out=timed_out,
                                 duration=time.monotonic() - started)
        if code == REFUSED:
            raise ExecutorError(text.strip() or "refused")
        if code != 0:
            raise ExecutorError(text.strip().splitlines()[-1] if text.strip() else f"{type(r).__name__} failed (exit {code})")
        if isinstance(r, Ping):
            return PingResult(root=ROOT)
        if isinstance(r, Read):
            if b"\0" in out.data[:8192]:
                raise ExecutorError(f"{r.path!r} is a binary file")
            return FileText(content=text, truncated=out.total > cap)
        if isinstance(r, Write):
            return WriteResult(bytes=int(text.strip() or 0))
        entries = [DirEntry(name=line.rstrip("/"), type="dir" if line.endswith("/") else "file") for line in text.splitlines()]
        return ListResult(entries=entries)

    # -- the wire: overrides of Executor ---------------------------------------------------

    def _cancel(self, conn: Connection, rid: int) -> None:
        pid = self._pids.get(rid)
        if pid:
            task = asyncio.get_running_loop().create_task(self._kill_group(pid))
            self._kills.add(task)
            task.add_done_callback(self._kills.discard)

    def _received(self, conn: Connection) -> None:
        frames = conn.frames
        while True:
            if conn.partial is None:
                line = frames.line()
                if line is None:
                    return
                fields = line.split()
                if fields[:1] == [b"P"] and len(fields) == 3:
                    self._pids[_number(fields[1])] = _number(fields[2])
                    continue
                if fields[:1] != [b"R"] or len(fields) != 5:
                    raise ProtocolError(f"unexpected line {line[:40]!r}")
                conn.partial = (_number(fields[1]), _number(fields[2]), _number(fields[3]), frames.size(fields[4]))
            rid, code, total, sent = conn.partial
            data = frames.take(sent)
            if data is None:
                return
            conn.partial = None
            self._pids.pop(rid, None)
            self._resolve(conn, rid, _Output(code, data, total))


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _number(field: bytes) -> int:
    if not field.isdigit() or len(field) > 20:
        raise ProtocolError(f"bad number {field[:20]!r}")
    return int(field)
