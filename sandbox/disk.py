"""Per-sandbox disks: the quota on what a sandbox can write.

Docker's `storage_opt size` needs overlay2 on xfs with project quotas and is refused on ext4, so
each sandbox gets a disk of its own instead: a sparse file of SANDBOX_DISK bytes under the data
directory, formatted ext4 and loop-mounted on the host. Its directories become the container's
/workspace, the sandbox user's HOME, /tmp and /var/tmp (Docker named volumes binding them, so
the image's own content is copied in on first use): everything the sandbox user can write, so a
write past the size fails with ENOSPC inside the sandbox and nowhere else. (/tmp on tmpfs would
count against the memory limit instead, and filling it would end in the OOM killer, not a clear
error.) /run/lock is a 1 MiB tmpfs; /dev/shm is Docker's 64 MiB one.

A disk outlives its container: a session's disk is part of its snapshot and is mounted again on
restore, until the snapshot is collected or evicted. Files are sparse (only what is written
takes host space; `discard` gives freed blocks back), so the sum of quotas may exceed the
host's disk: that is overcommit, as with memory.

Needs root, /dev/loop-control and e2fsprogs (`mkfs.ext4`) on the host running the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from bot.config import MIN_DISK, parse_size

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\Z")
MOUNT_OPTIONS = "loop,nosuid,nodev,noinit_itable,discard"
"""`noinit_itable`: no background zeroing of inode tables (it would fill the sparse file);
`discard`: files removed inside the sandbox give their space back to the host."""
DIRS = {"workspace": "/workspace", "home": "/home/sandbox", "tmp": "/tmp", "vartmp": "/var/tmp"}
"""Directories on a disk and where each is mounted in the container (sandbox/protocol.py's
WORKSPACE and SANDBOX_HOME)."""


class DiskError(Exception):
    pass


def new_disk_name() -> str:
    return "d" + uuid.uuid4().hex[:20]


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise DiskError(f"{argv[0]} failed (exit {proc.returncode}): {out.decode(errors='replace').strip()[-500:]}")
    return out.decode(errors="replace")


class DiskStore:
    """The disks under one directory (0700; images 0600): `<name>.img` files, mounted at `<name>/`."""

    def __init__(self, root: Path, size: str):
        self.root = root.resolve()
        self.size = size
        self.size_bytes = parse_size(size)
        if self.size_bytes < MIN_DISK:
            raise ValueError(f"{size!r} is smaller than the least useful disk (16m)")
        self._locks: dict[str, asyncio.Lock] = {}

    def check(self) -> None:
        """At start: what the disks need is there (a clear message instead of a failed session)."""
        missing = [tool for tool in ("mkfs.ext4", "mount", "umount") if shutil.which(tool) is None]
        if missing:
            raise DiskError(f"{', '.join(missing)} not found (install e2fsprogs and mount)")
        if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
            raise DiskError("per-sandbox disks need root and loop devices (/dev/loop-control)")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def image(self, name: str) -> Path:
        if not _NAME.match(name):
            raise DiskError(f"bad disk name {name!r}")
        return self.root / f"{name}.img"

    def mountpoint(self, name: str) -> Path:
        self.image(name)  # checks the name
        return self.root / name

    def path(self, name: str, directory: str) -> Path:
        """Where one of `DIRS` of a mounted disk is on the host."""
        return self.mountpoint(name) / directory

    def exists(self, name: str) -> bool:
        return self.image(name).exists()

    def names(self) -> set[str]:
        """Every disk with a file here."""
        if not self.root.is_dir():
            return set()
        return {p.name.removesuffix(".img") for p in self.root.glob("*.img") if _NAME.match(p.name.removesuffix(".img"))}

    def mounted(self) -> set[str]:
        """Every disk of this store mounted now (read from /proc/mounts, so it holds after a restart)."""
        found = set()
        with open("/proc/mounts") as mounts:
            for line in mounts:
                target = line.split()[1].replace("\\040", " ")
                parent, _, name = target.rpartition("/")
                if parent == str(self.root) and _NAME.match(name):
                    found.add(name)
        return found

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def attach(self, name: str) -> Path:
        """Mount the disk, making it first if it does not exist; returns its mount point."""
        async with self._lock(name):
            image, mountpoint = self.image(name), self.mountpoint(name)
            if name in self.mounted():
                return mountpoint
            self.check()
            fresh = not image.exists()
            if fresh:
                fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.ftruncate(fd, self.size_bytes)  # sparse: takes no space until written
                finally:
                    os.close(fd)
                try:
                    await _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1",
                               str(image))
                except BaseException:
                    image.unlink(missing_ok=True)
                    raise
            mountpoint.mkdir(mode=0o700, exist_ok=True)
            await _run("mount", "-o", MOUNT_OPTIONS, str(image), str(mountpoint))
            for directory in DIRS:  # empty on a fresh disk, so Docker copies the image's content in
                (mountpoint / directory).mkdir(exist_ok=True)
                if fresh and directory.endswith("tmp"):
                    os.chmod(mountpoint / directory, 0o1777)  # when the image has none to copy
            return mountpoint

    async def detach(self, name: str) -> None:
        """Unmount (the loop device goes with it: `mount -o loop` sets autoclear); the file stays."""
        async with self._lock(name):
            mountpoint = self.mountpoint(name)
            if name in self.mounted():
                try:
                    await _run("umount", str(mountpoint))
                except DiskError:
                    await _run("umount", "--lazy", str(mountpoint))  # busy: gone once the last user is
            with contextlib.suppress(FileNotFoundError, OSError):
                mountpoint.rmdir()
        self._locks.pop(name, None)

    async def delete(self, name: str) -> None:
        await self.detach(name)
        self.image(name).unlink(missing_ok=True)

    async def usage(self, name: str) -> int:
        """Bytes the disk's file takes on the host (sparse: only what was written)."""
        return os.stat(self.image(name)).st_blocks * 512
