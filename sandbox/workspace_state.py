"""A session's work kept as text in the database, so a sandbox on any host can be rebuilt from it.

A snapshot (sandbox/sessions.py) is an image in one Docker engine: when another instance on
another host takes a session over, it is not there. So after every turn the workspace is also
exported as the commit its branch started from plus one binary git patch from the workspace as
the sandbox started (that commit and whatever the image put there, e.g. a setup step's files:
its `start_tree`) to the workspace now (the agent's commits, edits and untracked files; ignored
and excluded files are not work), staged through a throwaway index so the session's own index
is untouched. A new sandbox with no snapshot to restore checks out that commit (fetching it if
needed) and applies the patch. A patch over MAX_STATE bytes is not kept: the snapshot, where
there is one, still is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.store.db import Database
from bot.store.tables import WorkspaceStateRow
from sandbox.executor import Executor
from sandbox.protocol import Exec, Write

log = logging.getLogger(__name__)

MAX_STATE = 16 * 1024 * 1024
PATCH_FILE = ".git/hosted-agents-state.patch"
_STAGE_ALL = ('set -e; idx=$(mktemp); trap \'rm -f "$idx"\' EXIT; cp .git/index "$idx" 2>/dev/null || true; '
              'GIT_INDEX_FILE="$idx" git add -A 2>/dev/null; ')
TREE = _STAGE_ALL + 'GIT_INDEX_FILE="$idx" git write-tree'
EXPORT = _STAGE_ALL + 'GIT_INDEX_FILE="$idx" git diff --cached --binary --no-color "$1" 2>/dev/null'


@dataclass(frozen=True, slots=True)
class WorkspaceState:
    base_commit: str
    start_tree: str
    """The workspace as the sandbox started, a tree in its repository: what `patch` is against."""
    patch: str


class WorkspaceStates:
    def __init__(self, db: Database):
        self.db = db

    async def get(self, session_id: str) -> WorkspaceState | None:
        async with self.db.session() as s:
            row = await s.get(WorkspaceStateRow, session_id)
        return WorkspaceState(row.base_commit, row.start_tree, row.patch) if row is not None else None

    async def save(self, session_id: str, repo: str, state: WorkspaceState) -> None:
        async with self.db.session() as s, s.begin():
            row = await s.get(WorkspaceStateRow, session_id)
            if row is None:
                s.add(WorkspaceStateRow(session_id=session_id, repo=repo, base_commit=state.base_commit,
                                        start_tree=state.start_tree, patch=state.patch, updated_at=datetime.now(UTC)))
            else:
                row.repo, row.base_commit, row.start_tree = repo, state.base_commit, state.start_tree
                row.patch = state.patch
                row.updated_at = datetime.now(UTC)


async def starting_point(executor: Executor) -> tuple[str, str] | None:
    """(HEAD, the tree of the whole workspace now): taken as a sandbox starts, before any work."""
    commit = await executor.call(Exec(argv=["git", "rev-parse", "HEAD"], timeout=30))
    tree = await executor.call(Exec(argv=["/bin/sh", "-c", TREE], timeout=300))
    ids = commit.output.strip(), tree.output.strip()
    if commit.exit_code or tree.exit_code or not all(len(i) in (40, 64) for i in ids):
        return None
    return ids


async def export(executor: Executor, base_commit: str, start_tree: str) -> WorkspaceState | None:
    """The workspace as a patch from `start_tree`; None when it cannot be made or is too big."""
    result = await executor.call(Exec(argv=["/bin/sh", "-c", EXPORT, "sh", start_tree], timeout=300, cap=MAX_STATE))
    if result.exit_code != 0 or result.truncated or result.timed_out:
        why = "too big" if result.truncated else (result.output.strip().splitlines() or ["failed"])[-1][:200]
        log.warning("workspace state not exported (%s)", why)
        return None
    return WorkspaceState(base_commit, start_tree, result.output)


async def check_out_base(executor: Executor, state: WorkspaceState, branch: str, env: dict[str, str]) -> bool:
    """Put `branch` at the state's commit (fetched if this clone lacks it). False when it cannot be had:
    the patch then goes onto the synced branch as it is."""
    have = ["git", "cat-file", "-e", f"{state.base_commit}^{{commit}}"]
    if (await executor.call(Exec(argv=have, timeout=30))).exit_code != 0:
        await executor.call(Exec(argv=["git", "fetch", "--quiet", "origin", state.base_commit], timeout=300, env=env))
    if (await executor.call(Exec(argv=have, timeout=30))).exit_code != 0:
        return False
    checkout = Exec(argv=["git", "checkout", "--quiet", "-B", branch, state.base_commit], timeout=60)
    return (await executor.call(checkout)).exit_code == 0


async def apply(executor: Executor, state: WorkspaceState) -> str | None:
    """Apply the state's patch to the workspace. None when applied (or empty); else a note for the thread.

    Take the sandbox's `starting_point` before: later states are patches against it."""
    if not state.patch.strip():
        return None
    await executor.call(Write(path=PATCH_FILE, content=state.patch))
    applied = await executor.call(Exec(argv=["git", "apply", "--binary", "--whitespace=nowarn", PATCH_FILE], timeout=300))
    await executor.call(Exec(argv=["rm", "-f", PATCH_FILE], timeout=30))
    if applied.exit_code != 0:
        reason = (applied.output.strip().splitlines() or ["failed"])[-1][:200]
        log.warning("workspace state not applied: %s", reason)
        return f"The session's earlier changes could not all be restored ({reason})."
    return None
