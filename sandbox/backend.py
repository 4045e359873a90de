"""The boundary every sandbox engine implements. Kept small so a second backend (Kubernetes,
a remote Docker host) is one new module: create from an image, run commands through an
executor, snapshot to an image, stop, remove, find by label."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, Field

from sandbox.executor import Executor

LABEL = "hosted-agents"
"""Every container and image we make carries `hosted-agents.*` labels: role, repo, session."""


class SandboxLimits(BaseModel):
    """Hardening applied to every container."""

    network: str = "proxy"
    """`proxy`: no network of its own, the service's egress proxy (allowlist) is the only way out;
    `none`: no way out; `host`: the host's network and every service on its loopback; `bridge`:
    Docker's bridge (the internet, cloud metadata, other containers)."""
    memory: str = "2g"
    cpus: float = Field(2.0, gt=0)
    pids: int = Field(1024, ge=16)


@dataclass(frozen=True)
class ContainerRef:
    id: str
    image: str
    labels: dict[str, str] = field(default_factory=dict)


class SandboxBackend(Protocol):
    async def create(self, image: str, labels: dict[str, str]) -> ContainerRef:
        """Start a container from `image` with /workspace as its working directory."""

    async def executor(self, ref: ContainerRef) -> Executor:
        """A connected executor for the container (started on first use, restarted if it died)."""

    async def snapshot(self, ref: ContainerRef, repository: str, tag: str, labels: dict[str, str], pause: bool = False) -> str:
        """Commit the container's filesystem as an image; returns `repository:tag`."""

    async def is_running(self, ref: ContainerRef) -> bool: ...

    async def stop(self, ref: ContainerRef) -> None: ...

    async def remove(self, ref: ContainerRef) -> None: ...

    async def find(self, labels: dict[str, str]) -> list[ContainerRef]: ...

    def assign_egress(self, ref: ContainerRef, owner: str) -> None:
        """Report the container's egress connections for `owner` (a session claiming a warm container);
        a no-op where the backend has no egress proxy."""

    async def image_exists(self, image: str) -> bool: ...

    async def remove_image(self, image: str) -> None: ...
