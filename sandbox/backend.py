"""The boundary every sandbox engine implements. Kept small so a second backend (Kubernetes,
a remote Docker host) is one new module: create from an image, run commands through an
executor, snapshot to an image, stop, remove, find by label."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, Field

from sandbox.executor import Executor

LABEL = "hosted-agents"
"""Every container and image we make carries `hosted-agents.*` labels: role, repo, session, and
the two below (which database's cluster, which instance of it made it)."""
INSTANCE_LABEL = f"{LABEL}.instance"
"""The id of the service instance that made a container or snapshot image (INSTANCE_ID): an
instance adopts and removes its own, and those of instances of its cluster that are no longer alive."""
CLUSTER_LABEL = f"{LABEL}.cluster"
"""Which deployment (central database) the instance belongs to: a short digest of DATABASE_URL
without its password. Containers of another deployment on the same engine are never touched."""
DISK_LABEL = f"{LABEL}.disk"
"""The disk a container uses (empty: none); a snapshot image carries its session's disk the same way."""


class SandboxLimits(BaseModel):
    """Hardening applied to every container."""

    network: str = "proxy"
    """`proxy`: no network of its own, the service's egress proxy (allowlist) is the only way out;
    `none`: no way out; `host`: the host's network and every service on its loopback; `bridge`:
    Docker's bridge (the internet, cloud metadata, other containers)."""
    memory: str = "2g"
    cpus: float = Field(2.0, gt=0)
    pids: int = Field(1024, ge=16)
    runtime: str = ""
    """OCI runtime (`runsc` for gVisor); empty: the engine's default."""


@dataclass(frozen=True)
class ContainerRef:
    id: str
    image: str
    labels: dict[str, str] = field(default_factory=dict)


class SandboxBackend(Protocol):
    instance: str
    """Written as INSTANCE_LABEL on every container and snapshot image this backend makes."""
    engine: str
    """The engine's own id (images live in one engine: image records are looked up by it)."""

    async def create(self, image: str, labels: dict[str, str], disk: str | None = None) -> ContainerRef:
        """Start a container from `image` with /workspace as its working directory.

        `disk` names the sandbox's own disk (its quota), made on first use from the image's
        /workspace and HOME and mounted there; the same name later mounts the same files again
        (a restored session). None: no disk, the workspace is in the container's layer (image
        builds, whose workspace must go into the committed image)."""

    async def executor(self, ref: ContainerRef) -> Executor:
        """A connected executor for the container (started on first use, restarted if it died)."""

    async def snapshot(self, ref: ContainerRef, repository: str, tag: str, labels: dict[str, str], pause: bool = False) -> str:
        """Commit the container's filesystem as an image; returns `repository:tag`. A disk is
        not in the image: its label (DISK_LABEL) names it, and it is kept with the snapshot."""

    async def is_running(self, ref: ContainerRef) -> bool: ...

    @property
    def own_source(self) -> str | None:
        """Where the containers made now find this project's source, read-only (OWN_SOURCE), or None."""

    async def stop(self, ref: ContainerRef) -> None: ...

    async def remove(self, ref: ContainerRef, keep_disk: bool = False) -> None:
        """Remove the container; its disk is unmounted, and deleted unless `keep_disk`."""

    async def find(self, labels: dict[str, str]) -> list[ContainerRef]: ...

    def assign_egress(self, ref: ContainerRef, owner: str) -> None:
        """Report the container's egress connections for `owner` (a session claiming a warm container);
        a no-op where the backend has no egress proxy."""

    async def image_exists(self, image: str) -> bool: ...

    async def image_labels(self, image: str) -> dict[str, str] | None:
        """The image's labels, or None when it does not exist."""

    async def remove_image(self, image: str) -> None: ...

    async def disk_exists(self, disk: str) -> bool: ...

    async def delete_disk(self, disk: str) -> None:
        """Unmount and delete a disk no container uses (a collected snapshot's)."""

    async def prune_disks(self, keep: set[str]) -> int:
        """Delete the disks neither a container nor `keep` names; unmount the unused ones of
        `keep`. Returns how many were deleted."""
