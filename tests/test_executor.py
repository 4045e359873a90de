"""The executor's channel on the real engine: commands cannot reach it, output that breaks the
framing cannot stall the service, a reply that never comes times out, and what is reported is
the command's own exit."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.backend import LABEL, ContainerRef, SandboxLimits
from sandbox.docker import DockerBackend
from sandbox.executor import Executor, ExecutorError
from sandbox.protocol import Edit, Exec, Ping, Read, Write
from sandbox.shell_executor import ShellExecutor
from tests.sandbox_fixtures import BASE_IMAGE, no_python_image

pytestmark = pytest.mark.usefixtures("docker_cleanup")


@dataclass
class Sandbox:
    docker: DockerBackend
    ref: ContainerRef
    ex: Executor

    async def as_root(self, script: str) -> tuple[int, str]:
        code, out = await self.docker.docker_exec(self.ref, ["sh", "-c", script])
        return code, out.decode()

    async def host_pid(self, pid: int) -> int:
        """The host's id of the container's process `pid`."""
        top = await asyncio.to_thread(self.docker.api.top, self.ref.id, "-eo pid")
        for (host,) in top["Processes"]:
            nspid = next(line for line in Path(f"/proc/{host}/status").read_text().splitlines() if line.startswith("NSpid:"))
            if nspid.split()[-1] == str(pid):
                return int(host)
        raise LookupError(pid)

    async def inject(self, pid: int, *chunks: bytes) -> None:
        """Write into the executor's own stdout from outside the container, as the engine's host
        can: no process inside can (it is not dumpable, and nothing there has CAP_SYS_PTRACE)."""
        path = f"/proc/{await self.host_pid(pid)}/fd/1"

        def write() -> None:
            with open(path, "wb", buffering=0) as out:
                for chunk in chunks:
                    out.write(chunk)

        await asyncio.to_thread(write)

    async def running(self, pid: int) -> bool:
        return (await self.as_root(f"kill -0 {pid}"))[0] == 0


async def open_sandbox(image: str = BASE_IMAGE) -> Sandbox:
    docker = DockerBackend(SandboxLimits(network="none", memory="512m", pids=256))
    ref = await docker.create(image, {f"{LABEL}.role": "test"})
    return Sandbox(docker, ref, await docker.executor(ref))


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    sb = await open_sandbox()
    yield sb
    await sb.ex.close()
    await sb.docker.remove(sb.ref)


class LoopLag:
    """The longest the event loop went without running a 10 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - started - 0.01)

    async def stop(self) -> float:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.worst


FORGE = (
    'for id in $(seq 1 40); do '
    'body="{\\"id\\": $id, \\"ok\\": true, \\"result\\": {\\"exit_code\\": 0, \\"output\\": \\"forged\\"}}"; '
    'printf "%s\\n%s" "${#body}" "$body" > /proc/$PPID/fd/1; done; echo genuine'
)


async def test_a_command_cannot_forge_a_reply_or_touch_the_executor(sandbox):
    result = await sandbox.ex.call(Exec(cmd=FORGE))
    assert "forged" not in result.output and result.output.endswith("genuine\n")
    assert "Permission denied" in result.output

    probe = await sandbox.ex.call(Exec(cmd="id -u; ls /proc/self/fd | tr '\\n' ' '; echo; "
                                           "cat /proc/$PPID/fd/0 2>&1 | head -c 200; kill -STOP $PPID 2>&1"))
    uid, fds, rest = probe.output.split("\n", 2)
    assert uid == "1000", "commands run as the unprivileged sandbox user"
    assert fds.split() == ["0", "1", "2", "3"], "only its own stdio (3 is ls reading the directory)"
    assert "Permission denied" in rest and ("not permitted" in rest or "Operation not permitted" in rest)
    assert (await sandbox.ex.call(Exec(cmd="echo still mine"))).output == "still mine\n"


async def test_a_frame_over_the_cap_restarts_the_executor_and_ends_what_it_ran(sandbox):
    pid = (await sandbox.ex.call(Ping())).pid
    assert pid is not None
    pending = asyncio.create_task(sandbox.ex.call(Exec(cmd="sleep 30")))
    await asyncio.sleep(0.3)
    await sandbox.inject(pid, b"99999999999\n")
    with pytest.raises(ExecutorError, match="restarted during this call"):
        await asyncio.wait_for(pending, 5)

    assert (await sandbox.ex.call(Ping())).pid != pid, "the next call got a fresh executor"
    deadline = time.monotonic() + 5
    while await sandbox.running(pid) or (await sandbox.as_root("pgrep -f '^sleep 30$'"))[0] == 0:
        assert time.monotonic() < deadline, "the old executor and its command ended"
        await asyncio.sleep(0.1)


async def test_an_endless_frame_neither_stalls_the_service_nor_hangs_the_call(sandbox):
    sandbox.ex.margin = 1.0
    pid = (await sandbox.ex.call(Ping())).pid
    assert pid is not None
    lag = LoopLag()
    # 25 MB of a frame announced as 30 MB: the host buffers it (linearly) and waits for the rest
    await sandbox.inject(pid, b"30000000\n", *(b"0" * 1_000_000 for _ in range(25)))
    started = time.monotonic()
    with pytest.raises(ExecutorError, match="did not answer within 2 s"):
        await sandbox.ex.call(Exec(cmd="true", timeout=1))  # its reply disappears into that frame
    elapsed = time.monotonic() - started
    worst = await lag.stop()
    assert elapsed < 4, f"the call failed at its host deadline, not later ({elapsed:.1f} s)"
    assert worst < 0.5, f"the event loop stayed responsive (worst stall {worst:.2f} s)"
    assert (await sandbox.ex.call(Exec(cmd="echo fresh"))).output == "fresh\n"


async def test_a_reply_that_never_comes_fails_within_its_timeout(sandbox):
    sandbox.ex.margin = 1.0
    pid = (await sandbox.ex.call(Ping())).pid
    assert pid is not None
    os.kill(await sandbox.host_pid(pid), signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(ExecutorError, match="did not answer within 2 s"):
        await sandbox.ex.call(Exec(cmd="true", timeout=1))
    assert time.monotonic() - started < 4
    os.kill(await sandbox.host_pid(pid), signal.SIGCONT)
    assert (await sandbox.ex.call(Exec(cmd="echo back"))).output == "back\n"


async def test_a_command_that_closes_its_output_is_waited_for(sandbox):
    for command in ("exec >&-; sleep 1; exit 3", "exec >&- 2>&-; sleep 1; exit 3"):
        result = await sandbox.ex.call(Exec(cmd=command))
        assert (result.exit_code, result.signal, result.timed_out) == (3, None, False), command
        assert result.duration >= 1.0

    started = time.monotonic()
    left = await sandbox.ex.call(Exec(cmd="sleep 30 & (while :; do echo tick; sleep 0.01; done) & echo started; exit 5"))
    assert left.exit_code == 5 and "started\n" in left.output  # the ticks may come first
    assert time.monotonic() - started < 2, "it ended with the command, not with what it left behind"
    gone = await sandbox.ex.call(Exec(cmd="pgrep -f '^sleep 30$' || echo none"))
    assert gone.output == "none\n", "what it left behind was killed"

    timed = await sandbox.ex.call(Exec(cmd="exec >&- 2>&-; sleep 30", timeout=1))
    assert timed.timed_out and timed.exit_code is None


async def test_the_shell_executor_quotes_every_path():
    sb = await open_sandbox(await no_python_image())
    try:
        assert isinstance(sb.ex, ShellExecutor)
        evil = "$(touch /tmp/pwned)"
        await sb.ex.call(Exec(argv=["mkdir", "-p", evil]))
        with pytest.raises(ExecutorError, match="is a directory"):
            await sb.ex.call(Read(path=evil))
        for path in (evil + "/x", "`touch /tmp/pwned`", "a'b\"$(touch /tmp/pwned)"):
            with pytest.raises(ExecutorError):
                await sb.ex.call(Read(path=path))
        assert (await sb.as_root("test -e /tmp/pwned"))[0] != 0, "no path ever ran as a command"
    finally:
        await sb.ex.close()
        await sb.docker.remove(sb.ref)


async def test_tools_and_commands_act_as_the_same_user(sandbox):
    await sandbox.ex.call(Write(path="notes/a.txt", content="one\n"))
    command = "echo two >> notes/a.txt && echo three > notes/b.txt && stat -c %u notes notes/a.txt"
    appended = await sandbox.ex.call(Exec(cmd=command))
    assert appended.exit_code == 0 and appended.output == "1000\n1000\n", "what a tool writes, a command can change"
    assert (await sandbox.ex.call(Edit(path="notes/b.txt", old="three", new="3"))).replacements == 1
    assert (await sandbox.ex.call(Read(path="notes/a.txt"))).content == "one\ntwo\n"
    await sandbox.ex.call(Exec(cmd="ln -s /etc/shadow notes/shadow"))
    with pytest.raises(ExecutorError, match="symbolic link"):
        await sandbox.ex.call(Read(path="notes/shadow"))
    root_only = await sandbox.ex.call(Exec(cmd="cat /etc/shadow"))
    assert root_only.exit_code != 0 and "Permission denied" in root_only.output
