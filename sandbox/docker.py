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
import io
import logging
import os
import secrets
import socket
import tarfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from sandbox.backend import CLUSTER_LABEL, DISK_LABEL, INSTANCE_LABEL, LABEL, ContainerRef, SandboxLimits
from sandbox.disk import DIRS as DISK_DIRS
from sandbox.disk import DiskStore
from sandbox.egress import EgressProxy
from sandbox.executor import START, Executor, NoPython
from sandbox.framing import MAX_FRAME, ProtocolError
from sandbox.protocol import OWN_SOURCE, WORKSPACE, Ping
from sandbox.shell_executor import LOOP, ShellExecutor

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_HOST = "unix:///var/run/docker.sock"
CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"]
"""The only capabilities a sandbox keeps, and only its root processes can use them: the executor
and the operator's image setup steps. Commands of the sandbox user (uid 1000, no-new-privileges)
have none. Docker's defaults minus AUDIT_WRITE, MKNOD, NET_BIND_SERVICE, NET_RAW, SETFCAP,
SETPCAP and SYS_CHROOT, which nothing here needs.

- SETUID, SETGID: the executor hands every command to the sandbox user (and takes its
  file-system identity with setfsuid for file operations); apt drops to `_apt` the same way.
- CHOWN: the executor gives an old image's workspace and HOME to the sandbox user; setup
  steps and `dpkg` set owners of what they install.
- FOWNER: chmod/utime on files root does not own (HOME of the sandbox user, unpacked packages).
- DAC_OVERRIDE: root setup steps (package installs) write into directories owned by others.
- FSETID: `dpkg` keeps setgid bits of the binaries it installs.
- KILL: the executor kills the sandbox user's process groups (timeouts, Stop).
"""
EGRESS_LABEL = f"{LABEL}.egress"
EGRESS_MOUNT = "/run/hosted-agents"
EGRESS_PORT = 3128
EGRESS_URL = f"http://127.0.0.1:{EGRESS_PORT}"
FORWARDER = (Path(__file__).parent / "egress_forwarder.py").read_text()


class DockerUnavailable(Exception):
    pass


class UnknownRuntime(DockerUnavailable):
    """SANDBOX_RUNTIME names an OCI runtime the engine does not have."""


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


def ping_engine(host: str, timeout: float = 5.0, version: str = "auto") -> None:
    """Raise unless the Docker engine at `host` answers `/_ping` within `timeout` seconds (blocking)."""
    with docker.APIClient(base_url=host, version=version, timeout=max(1, round(timeout))) as api:
        if not api.ping():
            raise DockerUnavailable(f"the Docker engine at {host} did not answer its ping")


class DockerBackend:
    def __init__(self, limits: SandboxLimits, host: str | None = None, egress: EgressProxy | None = None,
                 disks: DiskStore | None = None, source: Path | None = None, instance: str = "", cluster: str = ""):
        if limits.network == "proxy" and egress is None:
            raise ValueError("network `proxy` needs the service's EgressProxy")
        self.limits = limits
        self.source = source.resolve() if source is not None else None
        """A copy of this project's source (sandbox/own_source.py), mounted read-only at OWN_SOURCE
        in every container made once it exists."""
        self.egress = egress
        self.instance = instance or f"{socket.gethostname()[:40]}-{secrets.token_hex(3)}"
        """This service instance's id: every container and snapshot image carries it (INSTANCE_LABEL)."""
        self.cluster = cluster
        """The deployment's digest (CLUSTER_LABEL); empty: unknown (such containers are everyone's)."""
        self.disks = disks
        self._disk_locks: dict[str, asyncio.Lock] = {}
        """Per-sandbox disks (the quota); None: containers write to their own layer, unlimited."""
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        url = urlparse(self.host)
        if url.scheme not in ("unix", "tcp", "http") or os.environ.get("DOCKER_TLS_VERIFY"):
            raise DockerUnavailable(f"DOCKER_HOST {self.host}: only unix:// and plain tcp:// engines are supported")
        self._address = url
        try:
            self.api: docker.APIClient = docker.APIClient(base_url=self.host, version="auto", timeout=600)
            self.api.ping()
            self._info: dict[str, Any] = self.api.info()
        except Exception as exc:
            raise DockerUnavailable(f"no Docker engine at {self.host} ({type(exc).__name__})") from None
        self.engine = str(self._info.get("ID") or self.host)
        """The engine's id (`docker info`): images are recorded per engine."""
        self._check_runtime()

    @property
    def own_source(self) -> str | None:
        """Where containers made now find this project's source (OWN_SOURCE), or None."""
        return OWN_SOURCE if self.source is not None and self.source.is_dir() else None

    def ping(self, timeout: float = 5.0) -> None:
        """Raise unless the engine answers (readiness; blocking: call it off the event loop)."""
        ping_engine(self.host, timeout, version=self.api.api_version)

    def _check_runtime(self) -> None:
        """At start, not at the first session: a runtime the engine lacks fails every create."""
        if not self.limits.runtime:
            return
        known = sorted((self._info.get("Runtimes") or {}).keys())
        if self.limits.runtime not in known:
            raise UnknownRuntime(f"the Docker engine at {self.host} has no runtime {self.limits.runtime!r} "
                                 f"(it has: {', '.join(known) or 'none'}); install it (gVisor: runsc) "
                                 "and register it in /etc/docker/daemon.json, or unset SANDBOX_RUNTIME")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """docker-py blocks: its calls run in a worker thread (never on a tool call's path)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def create(self, image: str, labels: dict[str, str], disk: str | None = None) -> ContainerRef:
        if disk is None or self.disks is None:
            return await self._create(image, labels, None)
        async with self._disk_lock(disk):  # a release of the same disk (the session's last container) goes first
            return await self._create(image, labels, disk)

    async def _create(self, image: str, labels: dict[str, str], disk: str | None) -> ContainerRef:
        binds, disk_labels = await self._disk_binds(disk)
        isolation = self._isolation(bool(binds))
        labels = {f"{LABEL}.managed": "1", **labels, **self._owner_labels(), **disk_labels}
        environment = {"HOME": "/root", "LANG": "C.UTF-8"}
        egress_key = await self._egress_setup(labels, environment, binds)
        if self.own_source is not None and self.source is not None:
            binds[str(self.source)] = {"bind": OWN_SOURCE, "mode": "ro"}
        host_config = self.api.create_host_config(
            network_mode="none" if egress_key else self.limits.network,
            mem_limit=self.limits.memory,
            memswap_limit=self.limits.memory,  # no swap on top of the memory limit
            nano_cpus=int(self.limits.cpus * 1e9),
            pids_limit=self.limits.pids,
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
            cap_add=CAPABILITIES,
            init=True,
            **isolation,
            binds=binds,
        )

        def create_and_start() -> str:
            container = self.api.create_container(
                image, command=["sleep", "infinity"], working_dir=WORKSPACE, labels=labels,
                environment=environment, host_config=host_config,
            )
            try:
                self.api.start(container["Id"])
            except BaseException:
                self.api.remove_container(container["Id"], force=True)
                raise
            return str(container["Id"])

        try:
            ref = ContainerRef(await self._run(create_and_start), image, labels)
        except BaseException:
            if egress_key and self.egress is not None:
                await self.egress.close_socket(egress_key)
            if disk is not None and self.disks is not None:
                await self._release_disk_locked(disk, delete=False)  # unmounted; the caller decides about the file
            raise
        if egress_key:
            try:
                await self._egress_start(ref)
            except BaseException:
                # not self.remove(): it would wait for this disk's lock, which create() holds
                await self._remove_container(ref)
                if disk is not None and self.disks is not None:
                    await self._release_disk_locked(disk, delete=False)
                raise
        return ref

    def _owner_labels(self) -> dict[str, str]:
        """Which instance (and deployment) made it: set on every container and snapshot image."""
        return {INSTANCE_LABEL: self.instance, CLUSTER_LABEL: self.cluster}  # set: never inherited from an image

    async def _egress_setup(self, labels: dict[str, str], environment: dict[str, str],
                            binds: dict[str, Mapping[str, str]]) -> str | None:
        """For network `proxy`: a socket of the egress proxy for this container, its directory mounted
        read-only at /run/hosted-agents, HTTP(S)_PROXY pointing at the forwarder; returns its key."""
        if self.limits.network != "proxy" or self.egress is None:
            return None
        key = uuid.uuid4().hex[:16]
        owner = labels.get(f"{LABEL}.session") or labels.get(f"{LABEL}.role", "")
        directory = await self.egress.open(key, owner)
        labels[EGRESS_LABEL] = key
        binds[str(directory)] = {"bind": EGRESS_MOUNT, "mode": "ro"}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            environment[name] = EGRESS_URL
        # Not 127.0.0.1: servers on the host's loopback (tests') are reached through the proxy.
        environment["NO_PROXY"] = environment["no_proxy"] = "localhost"
        return key

    async def _egress_start(self, ref: ContainerRef) -> None:
        """Start the forwarder as root; the exec returns once it listens (it forks into the background).
        An image without python3 gets no way out (its sandbox runs, without network)."""
        argv = ["python3", "-c", FORWARDER, f"{EGRESS_MOUNT}/proxy.sock", str(EGRESS_PORT)]

        def run() -> tuple[int, bytes]:
            exec_id = self.api.exec_create(ref.id, argv, stdout=True, stderr=True, user="0")["Id"]
            output = self.api.exec_start(exec_id)
            return int(self.api.exec_inspect(exec_id)["ExitCode"]), bytes(output)

        code, output = await self._run(run)
        if code in (126, 127):
            log.warning("sandbox %s: no python3 for the egress forwarder; it has no network", ref.id[:12])
        elif code != 0:
            raise RuntimeError(f"the egress forwarder did not start: {output.decode('utf-8', 'replace').strip()[:500]}")

    def assign_egress(self, ref: ContainerRef, owner: str) -> None:
        """Report the container's egress connections for `owner` (a session id) from now on."""
        key = ref.labels.get(EGRESS_LABEL)
        if key and self.egress is not None:
            self.egress.assign(key, owner)

    async def _egress_adopt(self, ref: ContainerRef) -> None:
        """A container from an earlier run of the service: listen on its socket again (same directory,
        so its bind mount shows the new socket; its forwarder is still running)."""
        key = ref.labels.get(EGRESS_LABEL)
        if key and self.egress is not None and not self.egress.is_open(key):
            owner = ref.labels.get(f"{LABEL}.session") or ref.labels.get(f"{LABEL}.role", "")
            await self.egress.open(key, owner)

    # -- hardening and disks (create's helpers) --------------------------------------------

    def _isolation(self, disk: bool) -> dict[str, Any]:
        """The OCI runtime (SANDBOX_RUNTIME, e.g. gVisor's runsc); with a disk, the one
        world-writable directory not on it (/run/lock) becomes a tiny tmpfs."""
        options: dict[str, Any] = {}
        if disk:
            options["tmpfs"] = {"/run/lock": "rw,noexec,nosuid,nodev,mode=1777,size=1m"}
        if self.limits.runtime:
            options["runtime"] = self.limits.runtime
        return options

    async def _disk_binds(self, disk: str | None) -> tuple[dict[str, Mapping[str, str]], dict[str, str]]:
        """Mount the disk (made on first use) and bind its directories (/workspace, HOME, /tmp,
        /var/tmp) through named volumes: Docker copies an image's content into an empty named
        volume, so a fresh disk starts with the image's checkout and caches, and a restored one
        keeps its own."""
        if disk is None or self.disks is None:
            return {}, {DISK_LABEL: ""}  # set, so a label inherited from a snapshot image never names a disk
        disks = self.disks
        await disks.attach(disk)
        await asyncio.gather(*(self._run(
            self.api.create_volume, _volume_name(disk, directory), driver="local",
            driver_opts={"type": "none", "o": "bind", "device": str(disks.path(disk, directory))},
            labels={f"{LABEL}.managed": "1", DISK_LABEL: disk}) for directory in DISK_DIRS))
        binds: dict[str, Mapping[str, str]] = {
            _volume_name(disk, directory): {"bind": target, "mode": "rw"} for directory, target in DISK_DIRS.items()}
        return binds, {DISK_LABEL: disk}

    def _disk_lock(self, disk: str) -> asyncio.Lock:
        return self._disk_locks.setdefault(disk, asyncio.Lock())

    async def _release_disk(self, disk: str, delete: bool) -> None:
        """Remove the disk's volumes, unmount it, and delete its file when asked; a container
        that took the disk meanwhile keeps it (its volumes are in use)."""
        async with self._disk_lock(disk):
            await self._release_disk_locked(disk, delete)
        if delete:
            self._disk_locks.pop(disk, None)

    async def _release_disk_locked(self, disk: str, delete: bool) -> None:
        assert self.disks is not None
        if not (self.disks.exists(disk) or disk in self.disks.mounted()):
            return  # another DATA_DIR's disk on this engine (its container was ours to remove, not its disk)
        for directory in DISK_DIRS:
            try:
                await self._run(self.api.remove_volume, _volume_name(disk, directory), force=True)
            except NotFound:
                pass
            except APIError as exc:  # still in use by a container: it stays mounted for that one
                log.warning("disk %s kept mounted: %s", disk, exc.explanation or exc)
                return
        await (self.disks.delete(disk) if delete else self.disks.detach(disk))

    async def disk_exists(self, disk: str) -> bool:
        return self.disks is not None and self.disks.exists(disk)

    async def delete_disk(self, disk: str) -> None:
        if self.disks is not None:
            await self._release_disk(disk, delete=True)

    async def prune_disks(self, keep: set[str]) -> int:
        """At start: delete every disk not in `keep`, and unmount those no container uses."""
        if self.disks is None:
            return 0
        in_use = {ref.labels.get(DISK_LABEL, "") for ref in await self.find({})} - {""}
        deleted = 0
        for disk in (self.disks.names() | self.disks.mounted()) - in_use:
            if disk in keep:
                await self._release_disk(disk, delete=False)
            else:
                await self._release_disk(disk, delete=True)
                deleted += 1
        return deleted

    async def executor(self, ref: ContainerRef) -> Executor:
        """The python3 executor, or the shell executor when the image has no usable python3."""
        name = ref.id[:12]
        await self._egress_adopt(ref)

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
        changes = [f'LABEL {k}="{v}"' for k, v in {f"{LABEL}.managed": "1", **labels, **self._owner_labels()}.items()]
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

    async def remove(self, ref: ContainerRef, keep_disk: bool = False) -> None:
        await self._remove_container(ref)
        disk = ref.labels.get(DISK_LABEL)
        if disk and self.disks is not None:
            await self._release_disk(disk, delete=not keep_disk)

    async def _remove_container(self, ref: ContainerRef) -> None:
        """The container and its egress socket; its disk is the caller's to release."""
        try:
            await self._run(self.api.remove_container, ref.id, force=True)
        except NotFound:
            pass
        except APIError as exc:
            if "already in progress" not in str(exc):
                raise
        key = ref.labels.get(EGRESS_LABEL)
        if key and self.egress is not None:
            await self.egress.close_socket(key)

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

    async def image_labels(self, image: str) -> dict[str, str] | None:
        """The image's labels, or None when there is no such image."""
        try:
            attrs = await self._run(self.api.inspect_image, image)
        except ImageNotFound:
            return None
        return dict((attrs.get("Config") or {}).get("Labels") or {})

    async def remove_image(self, image: str) -> None:
        try:
            await self._run(self.api.remove_image, image)
        except ImageNotFound:
            pass
        except APIError as exc:  # still used by a container: it goes with the next prune
            log.info("image %s kept: %s", image, exc.explanation or exc)

    async def image_files(self, image: str, paths: list[str]) -> dict[str, str]:
        """Text files of an image (a path may be a directory), read from a container that is never
        started; paths the image lacks are left out. E.g. its apt sources."""

        def read() -> dict[str, str]:
            files: dict[str, str] = {}
            cid = self.api.create_container(image, command=["true"], network_disabled=True)["Id"]
            try:
                for path in paths:
                    try:
                        stream, _ = self.api.get_archive(cid, path)
                    except NotFound:
                        continue
                    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                        for member in tar.getmembers():
                            extracted = tar.extractfile(member) if member.isfile() else None
                            if extracted is not None:
                                text = extracted.read(1 << 20).decode("utf-8", "replace")
                                files[f"{os.path.dirname(path)}/{member.name}"] = text
            finally:
                self.api.remove_container(cid, force=True)
            return files

        return await self._run(read)

    async def docker_exec(self, ref: ContainerRef, argv: list[str]) -> tuple[int, bytes]:
        """One `docker exec` (the slow path: for baselines and emergencies, not for tools)."""

        def run() -> tuple[int, bytes]:
            exec_id = self.api.exec_create(ref.id, argv, stdout=True, stderr=True)["Id"]
            output = self.api.exec_start(exec_id)
            return int(self.api.exec_inspect(exec_id)["ExitCode"]), bytes(output)

        return await self._run(run)


def _volume_name(disk: str, directory: str) -> str:
    return f"hosted-agents-{disk}-{directory}"
