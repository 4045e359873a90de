"""Branch names, checked before they reach a git command (which gets them as arguments, never
through a shell): the rules of `git check-ref-format --branch`, so a name git would refuse is
refused here with a reason a person can act on."""

from __future__ import annotations

import re

_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


class InvalidBranch(ValueError):
    pass


def check_branch(name: str) -> str:
    """`name` if git accepts it as a branch name; else InvalidBranch saying why."""
    problem = _problem(name)
    if problem:
        raise InvalidBranch(f"{name[:100]!r} is not a valid branch name ({problem})")
    return name


def _problem(name: str) -> str | None:
    if not name or len(name) > 200:
        return "it must have 1 to 200 characters"
    if bad := _FORBIDDEN.search(name):
        return f"{bad.group()!r} is not allowed"
    if name.startswith("-"):
        return "it starts with '-'"
    if name == "@" or "@{" in name:
        return "'@{' and a lone '@' are not allowed"
    if ".." in name:
        return "'..' is not allowed"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "empty path components are not allowed"
    if name.endswith("."):
        return "it ends with '.'"
    for part in name.split("/"):
        if part.startswith("."):
            return "a component starts with '.'"
        if part.endswith(".lock"):
            return "a component ends with '.lock'"
    return None
