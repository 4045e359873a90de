"""The executor for images without a usable python3: a loop in plain `sh`, driven from the host.

The host turns every request into a short shell script in which every value from a request is
quoted; the loop in the container only runs scripts. Request: `id length limit cap user save` on
a line, then the script. Reply: `R id exit_code total sent lines saved` on a line, then `sent`
bytes: the whole output, or when it is longer than the cap its first 2/3 and last 1/3 of the cap,
so nothing a command prints can pass for a reply, and no output is larger than its cap on the
wire. With `save` (1), output longer than the cap is also copied whole, as the sandbox user, to
OUTPUTS/<n>.txt in the repository (`saved` is n, else 0), excluded from git. The host keeps one
request in flight, which lets the loop read a script with `head -c` without swallowing the next.

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
    OUTPUTS,
    OWN_SOURCE,
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

SAVE = rf"""
cd {ROOT} || exit 1
mkdir -p {OUTPUTS} || exit 1
x=/{OUTPUTS.split("/")[0]}/
if [ -d .git ]; then
  mkdir -p .git/info && {{ grep -qx "$x" .git/info/exclude 2>/dev/null || printf '\n%s\n' "$x" >>.git/info/exclude; }}
fi
n=1
while [ -e {OUTPUTS}/$n.txt ]; do n=$((n + 1)); done
cat >{OUTPUTS}/$n.txt && echo $n
"""
"""Run by the sandbox user with the whole output on stdin: its file, and its number on stdout."""

LOOP = rf"""
export HOME={SANDBOX_HOME}
export SAVE={shlex.quote(SAVE)}
command -v setpriv >/dev/null || {{ echo "setpriv is missing: the sandbox user cannot be used" >&2; exit 1; }}
mkdir -p {ROOT} "$HOME" || exit 1
cut -d: -f3 /etc/passwd | grep -qx {_ID} || echo "sandbox:x:{_ID}:{_ID}::$HOME:/bin/sh" >>/etc/passwd
cut -d: -f3 /etc/group | grep -qx {_ID} || echo "sandbox:x:{_ID}:" >>/etc/group
[ "$(stat -c %u "$HOME")" = {_ID} ] || {{ chown {_ID}:{_ID} "$HOME" && chmod 700 "$HOME"; }} || exit 1
[ "$(stat -c %u {ROOT})" = {_ID} ] || chown -R {_ID}:{_ID} {ROOT} || exit 1
while IFS=' ' read -r id len limit cap who save; do
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
  lines=$(wc -l <"$out" | tr -d ' ')
  [ "$size" -gt 0 ] && [ -n "$(tail -c 1 "$out")" ] && lines=$((lines + 1))
  n=0
  if [ "$size" -gt "$cap" ] && [ "$save" = 1 ]; then
    n=$(setpriv --reuid={_ID} --regid={_ID} --clear-groups sh -c "$SAVE" <"$out" 2>/dev/null) || n=0
  fi
  printf 'R %s %s %s %s %s %s\n' "$id" "$code" "$size" "$(( size < cap ? size : cap ))" "$lines" "${{n:-0}}"
  if [ "$size" -gt "$cap" ]; then
    head -c "$(( cap * 2 / 3 ))" "$out"
    [ "$(( cap - cap * 2 / 3 ))" -gt 0 ] && tail -c "$(( cap - cap * 2 / 3 ))" "$out"
  else
    cat "$out"
  fi
  rm -f "$out"
done
"""


@dataclass(frozen=True)
class _Output:
    code: int
    data: bytes
    total: int
    lines: int = 0
    saved: int = 0


def confined(rel: str, var: str = "p", source: bool = False) -> str:
    """Shell lines setting $var to the real path of `rel`, or refusing (exit 97) if it leaves the repo
    (with `source`, an absolute path under OWN_SOURCE is allowed too, and must stay there)."""
    if not isinstance(rel, str) or "\0" in rel:
        raise ExecutorError("a path must be a string")
    under_source = rel.startswith("/") and _within(posixpath.normpath(rel), OWN_SOURCE)
    if source and under_source:
        escaped = shlex.quote(f"{rel!r} leads outside {OWN_SOURCE} through a symbolic link")
        return (f"{var}=$(realpath -m -- {shlex.quote(posixpath.normpath(rel))}) || exit {REFUSED}\n"
                f'case "${var}" in {OWN_SOURCE}|{OWN_SOURCE}/*) ;; *) printf "%s\\n" {escaped}; exit {REFUSED};; esac\n')
    if under_source:
        raise ExecutorError(f"{OWN_SOURCE} is read-only: the project's own source can be read, not changed")
    if rel.startswith(("/", "~")):
        more = f" (or absolute under {OWN_SOURCE}, read-only)" if source else ""
        raise ExecutorError(f"paths are relative to the repository root{more}; {rel!r} is absolute")
    joined = posixpath.normpath(posixpath.join(ROOT, rel or "."))
    if joined != ROOT and not joined.startswith(ROOT + "/"):
        raise ExecutorError(f"{rel!r} is outside the repository")
    escaped = shlex.quote(f"{rel!r} leads outside the repository through a symbolic link")
    return (
        f"{var}=$(realpath -m -- {shlex.quote(joined)}) || exit {REFUSED}\n"
        f'case "${var}" in {ROOT}|{ROOT}/*) ;; *) printf "%s\\n" {escaped}; exit {REFUSED};; esac\n'
    )


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


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
        save = int(isinstance(request, Exec) and request.save)
        line = f"{limit} {cap} {'root' if as_root else 'sandbox'} {save}"
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
        if isinstance(r, Read):  # a first line `bytes lines`, then the page
            limit = f' | head -n {int(r.limit)}' if r.limit is not None else ""
            page = min(r.max_bytes, 4 * 1024 * 1024)
            return (confined(r.path, source=True) + _refuse_if('[ -d "$p" ]', f"{r.path!r} is a directory")
                    + 'n=$(wc -l < "$p") && s=$(wc -c < "$p") || exit 1\n'
                    + '[ "$s" -gt 0 ] && [ -n "$(tail -c 1 "$p")" ] && n=$((n + 1))\n'
                    + f'echo "$s $n" && tail -n +{int(r.offset)} -- "$p"{limit} | head -c {page + 1}',
                    60, page + 64, False)
        if isinstance(r, Write):
            data = base64.b64encode(r.content.encode()).decode()
            return (confined(r.path) + 'mkdir -p -- "$(dirname -- "$p")" && '
                    f'printf %s {data} | base64 -d > "$p" && wc -c < "$p"'), 60, 100, False
        if isinstance(r, ListDir):  # a first line with the count, then the first `limit` names
            return (confined(r.path, source=True) + f'cd -- "$p" && ls -1A | wc -l && ls -1Ap | head -n {int(r.limit)}',
                    60, 1_000_000, False)
        if isinstance(r, Search):
            glob = f"--include={shlex.quote(r.glob)} " if r.glob else ""
            script = (confined(r.path, source=True)
                      + f'case "$p" in {OWN_SOURCE}|{OWN_SOURCE}/*) t=$p;; *) t=$(realpath --relative-to={ROOT} -- "$p");; esac\n'
                      + f"cd {ROOT} && grep -rnIE --exclude-dir=.git -m 50 {glob}"
                      f'-e {shlex.quote(r.pattern)} -- "$t"')
            return script, max(1, round(r.timeout)), r.cap, False
        raise ExecutorError(f"unknown operation {type(r).__name__}")

    def _result(self, r: Request[Any], out: _Output, cap: int, started: float, limit: float) -> BaseModel:
        text = out.data.decode("utf-8", "replace")
        code = out.code
        if isinstance(r, Exec | Search):
            timed_out = code == 124 or (code == 137 and time.monotonic() - started >= limit)
            ended = dict(exit_code=None if timed_out else code, signal=code - 128 if code > 128 and not timed_out else None,
                         total_bytes=out.total, total_lines=out.lines, timed_out=timed_out,
                         duration=time.monotonic() - started)
            if out.total <= cap:
                return CommandResult(output=text, **ended)  # type: ignore[arg-type]  # the dict's values are typed per field
            head, tail = out.data[: cap * 2 // 3], out.data[cap * 2 // 3:]
            saved = f"{OUTPUTS}/{out.saved}.txt" if out.saved else None
            return CommandResult(
                output=head.decode("utf-8", "replace"), tail=tail.decode("utf-8", "replace"), truncated=True,
                head_lines=head[:-1].count(b"\n") + 1 if head else 0,
                tail_from_line=out.lines - tail.count(b"\n") + (1 if out.data.endswith(b"\n") else 0) if tail else 0,
                saved_path=saved, saved_bytes=out.total if saved else 0,
                save_error=None if saved or not isinstance(r, Exec) or not r.save else "the file could not be written",
                **ended)  # type: ignore[arg-type]
        if code == REFUSED:
            raise ExecutorError(text.strip() or "refused")
        if code != 0:
            raise ExecutorError(text.strip().splitlines()[-1] if text.strip() else f"{type(r).__name__} failed (exit {code})")
        if isinstance(r, Ping):
            return PingResult(root=ROOT)
        if isinstance(r, Read):
            return _page(r, out.data)
        if isinstance(r, Write):
            return WriteResult(bytes=int(text.strip() or 0))
        count, *names = text.splitlines()
        entries = [DirEntry(name=line.rstrip("/"), type="dir" if line.endswith("/") else "file") for line in names]
        return ListResult(entries=entries, total=int(count.strip() or 0))

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
                if fields[:1] != [b"R"] or len(fields) != 7:
                    raise ProtocolError(f"unexpected line {line[:40]!r}")
                conn.partial = (_number(fields[1]), _number(fields[2]), _number(fields[3]), frames.size(fields[4]),
                                _number(fields[5]), _number(fields[6]))
            rid, code, total, sent, lines, saved = conn.partial
            data = frames.take(sent)
            if data is None:
                return
            conn.partial = None
            self._pids.pop(rid, None)
            self._resolve(conn, rid, _Output(code, data, total, lines, saved))


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _page(r: Read, data: bytes) -> FileText:
    """A read's reply (`bytes lines`, then the page, a byte past its cap) as whole lines."""
    header, _, body = data.partition(b"\n")
    size, total = (int(field) for field in header.split())
    if b"\0" in body[:8192] and r.offset == 1:
        raise ExecutorError(f"{r.path!r} is a binary file")
    page = min(r.max_bytes, 4 * 1024 * 1024)
    cut = len(body) > page
    if cut:
        body = body[:page]
        whole = body.rfind(b"\n")
        body = body[: whole + 1] if whole >= 0 else body  # one line longer than a page: its start
    shown = body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)
    return FileText(content=body.decode("utf-8", "replace"), truncated=cut, first_line=r.offset,
                    last_line=r.offset + shown - 1, total_lines=total, total_bytes=size)


def _number(field: bytes) -> int:
    if not field.isdigit() or len(field) > 20:
        raise ProtocolError(f"bad number {field[:20]!r}")
    return int(field)
