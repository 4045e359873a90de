"""Whose containers are these? Several instances of one deployment may share a Docker engine.

Every container carries the id of the instance that made it (INSTANCE_LABEL) and the digest of
its deployment's database (CLUSTER_LABEL). An instance adopts only its own warm containers, and
removes only its own (from an earlier run with the same INSTANCE_ID), those without an instance
label (made by older versions), and those of instances of its deployment that are no longer
alive. With one instance (SQLite: `live` returns None) every container of the deployment is its
own, as before there were several. The sandbox layer knows nothing of how liveness is decided:
the wiring hands it a callable that returns the live instance ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Collection

from sqlalchemy.engine import make_url

from sandbox.backend import CLUSTER_LABEL, INSTANCE_LABEL, ContainerRef

LiveInstances = Callable[[], Awaitable[Collection[str] | None]]
"""The ids of the deployment's live instances, or None when this instance is the only one."""


async def single_instance() -> None:
    return None


def deployment_digest(database_url: str) -> str:
    """A short, stable name for the deployment: its database URL without the password."""
    try:
        url = make_url(database_url).set(password=None).render_as_string(hide_password=False)
    except Exception:
        url = database_url
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class Ownership:
    def __init__(self, instance: str, cluster: str = "", live: LiveInstances = single_instance):
        self.instance = instance
        self.cluster = cluster
        self.live = live

    async def live_set(self) -> set[str] | None:
        """The live instance ids (ours among them), or None: we are the only instance."""
        found = await self.live()
        return None if found is None else {*found, self.instance}

    def in_deployment(self, ref: ContainerRef) -> bool:
        """Not another deployment's container (one without the label is anyone's: an older version's)."""
        label = ref.labels.get(CLUSTER_LABEL, "")
        return not label or not self.cluster or label == self.cluster

    def mine(self, ref: ContainerRef, live: set[str] | None) -> bool:
        """Ours to adopt: made by this instance id (by any, when we are the only instance)."""
        return self.in_deployment(ref) and (live is None or ref.labels.get(INSTANCE_LABEL) == self.instance)

    def removable_at_start(self, ref: ContainerRef, live: set[str] | None) -> bool:
        """At start-up: ours from an earlier run, an older version's, or a dead instance's."""
        if not self.in_deployment(ref):
            return False
        label = ref.labels.get(INSTANCE_LABEL, "")
        return live is None or not label or label == self.instance or label not in live

    def dead(self, ref: ContainerRef, live: set[str] | None) -> bool:
        """While running: a container of another instance of ours that is no longer alive."""
        label = ref.labels.get(INSTANCE_LABEL, "")
        return (live is not None and self.in_deployment(ref) and bool(label) and label != self.instance
                and label not in live)
