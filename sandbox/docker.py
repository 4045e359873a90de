"""The Docker backend, on docker-py's low-level API (blocking calls run in threads).

Containers run `sleep infinity` under docker-init as PID 1; the executor is a separate process
started by one `docker exec`. Its stdin/stdout travel over a connection to the engine that this
module opens itself and upgrades with the documented `POST /exec/{id}/start` (no private
attributes of docker-py), and Docker's stream framing is taken off here, so the executor reads
plain bytes. A dead executor is restarted without losing the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from sandbox.backend import LABEL, ContainerRef, SandboxLimits
from sandbox.executor import START, Executor, NoPython
from sandbox.framing import MAX_FRAME, ProtocolError
from sandbox.protocol import WORKSPACE, Ping
from sandbox.shell_executor import LOOP, ShellExecutor

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_HOST = "unix:///var/run/docker.sock"
# Docker's default capabilities minus the network and device ones a coding sandbox never needs.
CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"]


class DockerUnavailable(Exception):
    pass


class ExecStream:
    """An exec's hijacked connection: stdout frames come out as plain bytes, stderr is logged."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str):
        self._reader = reader
        self._writer = writer
        self._name = name

    async def read(self) -> bytes:
        while True:
            try:
                header = await self._reader.readexactly(8)
                size = int.from_bytes(header[4:], "big")
                if size > MAX_FRAME:
                    raise ProtocolError(f"a Docker stream frame of {size:,} bytes")
                payload = await self._reader.readexactly(size)
            except asyncio.IncompleteReadError:
                return b""
            if header[0] == 1:
                return payload
            if header[0] == 2:
                log.warning("executor %s: %s", self._name, payload.decode("utf-8", "replace").rstrip()[:2000])
                continue
            raise ProtocolError(f"unknown Docker stream {header[0]}")

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def close(self) -> None:
        self._writer.close()


class DockerBackend:
    def __init__(self, limits: SandboxLimits, host: str | None = None):
        self.limits = limits
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        url = urlparse(self.host)
        if url.scheme not in ("unix", "tcp", "http") or os.environ.get("DOCKER_TLS_VERIFY"):
            raise DockerUnavailable(f"DOCKER_HOST {self.host}: only unix:// and plain tcp:// engines are supported")
        self._address = url
        try:
            self.api: docker.APIClient = docker.APIClient(base_url=self.host, version="auto", timeout=600)
            self.api.ping()
        except Exception as exc:
            raise DockerUnavailable(f"no Docker engine at {self.host} ({type(exc).__name__})") from None

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """docker-py blocks: its calls run in a worker thread (never on a tool call's path)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def create(self, image: str, labels: dict[str, str]) -> ContainerRef:
        host_config = self.api.create_host_config(
            network_mode=self.limits.network,
            mem_limit=self.limits.memory,
            memswap_limit=self.limits.memory,  # no swap on top of the memory limit
            nano_cpus=int(self.limits.cpus * 1e9),
            pids_limit=self.limits.pids,
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
            cap_add=CAPABILITIES,
            init=True,
        )
        labels = {f"{LABEL}.managed": "1", **labels}

        def create_and_start() -> str:
            container = self.api.create_container(
                image, command=["sleep", "infinity"], working_dir=WORKSPACE, labels=labels,
                environment={"HOME": "/root", "LANG": "C.UTF-8"}, host_config=host_config,
            )
            self.api.start(container["Id"])
            return str(container["Id"])

        return ContainerRef(await self._run(create_and_start), image, labels)

    async def executor(self, ref: ContainerRef) -> Executor:
        """The python3 executor, or the shell executor when the image has no usable python3."""
        name = ref.id[:12]

        def connector(argv: list[str]) -> Any:
            async def connect() -> ExecStream:
                exec_id = await self._run(self._exec_create, ref.id, argv)
                return await self._attach(exec_id, name)
            return connect

        async def kill_group(pid: int) -> None:
            # `pid` runs `timeout`, which passes a TERM on to its whole process group (and KILLs
            # it a second later); a plain positive pid, because dash's kill takes no group.
            await self.docker_exec(ref, ["sh", "-c", f"kill -TERM {int(pid)}"])

        executor: Executor = Executor(connector(START), lambda: self.is_running(ref), name)
        try:
            await executor.call(Ping())
            return executor
        except NoPython:
            await executor.close()
            executor = ShellExecutor(connector(["sh", "-c", LOOP]), lambda: self.is_running(ref), name, kill_group)
            try:
                await executor.call(Ping())
            except BaseException:
                await executor.close()
                raise
            return executor
        except BaseException:
            await executor.close()
            raise

    def _exec_create(self, container_id: str, argv: list[str]) -> str:
        # As root: the executor itself hands commands and file operations to the sandbox user.
        created = self.api.exec_create(container_id, argv, stdin=True, stdout=True, stderr=True, tty=False, user="0")
        return str(created["Id"])

    async def _attach(self, exec_id: str, name: str) -> ExecStream:
        """Start the exec on a connection of our own, upgraded to a raw stream (Engine API)."""
        if self._address.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(self._address.path)
        else:
            reader, writer = await asyncio.open_connection(self._address.hostname, self._address.port or 2375)
        body = b'{"Detach": false, "Tty": false}'
        writer.write(
            f"POST /v{self.api.api_version}/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            writer.close()
            raise ConnectionError(f"the engine did not start the executor ({type(exc).__name__})") from None
        status = head.split(b"\r\n", 1)[0]
        if status.split(b" ")[1:2] not in ([b"101"], [b"200"]):
            writer.close()
            raise ConnectionError(f"the engine refused the executor stream: {status.decode('latin-1')}")
        return ExecStream(reader, writer, name)

    async def snapshot(self, ref: ContainerRef, repository: str, tag: str, labels: dict[str, str], pause: bool = False) -> str:
        changes = [f'LABEL {k}="{v}"' for k, v in {f"{LABEL}.managed": "1", **labels}.items()]
        await self._run(self.api.commit, ref.id, repository=repository, tag=tag, pause=pause, changes=changes)
        return f"{repository}:{tag}"

    async def is_running(self, ref: ContainerRef) -> bool:
        try:
            state = (await self._run(self.api.inspect_container, ref.id))["State"]
        except NotFound:
            return False
        return bool(state.get("Running")) and not state.get("Paused")

    async def stop(self, ref: ContainerRef) -> None:
        with contextlib.suppress(NotFound):
            await self._run(self.api.stop, ref.id, timeout=2)

    async def remove(self, ref: ContainerRef) -> None:
        try:
            await self._run(self.api.remove_container, ref.id, force=True)
        except NotFound:
            pass
        except APIError as exc:
            if "already in progress" not in str(exc):
                raise

    async def find(self, labels: dict[str, str]) -> list[ContainerRef]:
        wanted = [f"{k}={v}" for k, v in {f"{LABEL}.managed": "1", **labels}.items()]
        found = await self._run(self.api.containers, all=True, filters={"label": wanted})
        return [ContainerRef(c["Id"], c["Image"], c.get("Labels") or {}) for c in found]

    async def image_exists(self, image: str) -> bool:
        try:
            await self._run(self.api.inspect_image, image)
        except ImageNotFound:
            return False
        return True

    async def remove_image(self, image: str) -> None:
        try:
            await self._run(self.api.remove_image, image)
        except ImageNotFound:
            pass
        except APIError as exc:  # still used by a container: it goes with the next prune
            log.info("image %s kept: %s", image, exc.explanation or exc)

    async def docker_exec(self, ref: ContainerRef, argv: list[str]) -> tuple[int, bytes]:
        """One `docker exec` (the slow path: for baselines and emergencies, not for tools)."""

        def run() -> tuple[int, bytes]:
            exec_id = self.api.exec_create(ref.id, argv, stdout=True, stderr=True)["Id"]
            output = self.api.exec_start(exec_id)
            return int(self.api.exec_inspect(exec_id)["ExitCode"]), bytes(output)

        return await self._run(run)
