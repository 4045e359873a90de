"""The Docker backend, on docker-py's low-level API (blocking calls run in threads).

Containers run `sleep infinity` under docker-init as PID 1; the executor is a separate process
started by one `docker exec` whose hijacked stdin/stdout socket becomes an asyncio stream, so a
dead executor is restarted without losing the container.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from sandbox.backend import LABEL, ContainerRef, SandboxLimits
from sandbox.executor import START, Executor, NoPython
from sandbox.shell_executor import LOOP, ShellExecutor

log = logging.getLogger(__name__)

WORKSPACE = "/workspace"
# Docker's default capabilities minus the network and device ones a coding sandbox never needs.
CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"]


class DockerUnavailable(Exception):
    pass


class DockerBackend:
    def __init__(self, limits: SandboxLimits, client: docker.APIClient | None = None):
        self.limits = limits
        try:
            self.api: docker.APIClient = client or docker.from_env(timeout=600).api
            self.api.ping()
        except Exception as exc:
            host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
            raise DockerUnavailable(f"no Docker engine at {host} ({type(exc).__name__})") from None

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
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
            return container["Id"]

        return ContainerRef(await self._run(create_and_start), image, labels)

    async def executor(self, ref: ContainerRef) -> Executor:
        """The python3 executor, or the shell executor when the image has no python3."""
        def connector(argv: list[str]):  # type: ignore[no-untyped-def]
            async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                raw = await self._run(self._start_executor, ref.id, argv)
                return await asyncio.open_connection(sock=raw)
            return connect

        async def kill_group(pid: int) -> None:
            # `pid` runs `timeout`, which passes a TERM on to its whole process group (and KILLs
            # it a second later); a plain positive pid, because dash's kill takes no group.
            await self.docker_exec(ref, ["sh", "-c", f"kill -TERM {int(pid)}"])

        executor: Executor = Executor(connector(START), lambda: self.is_running(ref), ref.id[:12])
        try:
            await executor.request("ping")
            return executor
        except NoPython:
            await executor.close()
            executor = ShellExecutor(connector(["sh", "-c", LOOP]), lambda: self.is_running(ref), ref.id[:12], kill_group)
            try:
                await executor.request("ping")
            except BaseException:
                await executor.close()
                raise
            return executor
        except BaseException:
            await executor.close()
            raise

    def _start_executor(self, container_id: str, argv: list[str]) -> socket.socket:
        exec_id = self.api.exec_create(container_id, argv, stdin=True, stdout=True, stderr=True, tty=False)["Id"]
        hijacked = self.api.exec_start(exec_id, socket=True)
        inner = getattr(hijacked, "_sock", hijacked)
        # Our own descriptor for the connection, so docker-py's objects can be let go.
        raw = socket.socket(inner.family, inner.type, fileno=os.dup(inner.fileno()))
        raw.setblocking(False)
        hijacked.close()
        return raw

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
        try:
            await self._run(self.api.stop, ref.id, timeout=2)
        except NotFound:
            pass

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
            return self.api.exec_inspect(exec_id)["ExitCode"], output

        return await self._run(run)
