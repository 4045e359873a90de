"""This project's own source, for the agent to read: copied at start into DATA_DIR/agent-source
and mounted read-only at OWN_SOURCE in every sandbox, so questions about the agent's own
capabilities and limits are answered from the code.

Only source and documentation files are copied (an allowlist of directories and suffixes), never
configuration such as `.env`: the copy is rebuilt from scratch at every start.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DIRECTORIES = ("bot", "sandbox", "classifier")
SUFFIXES = frozenset({".py", ".md", ".toml", ".html", ".js", ".css", ".yaml", ".yml", ".ini"})
TOP_FILES = ("README.md", "pyproject.toml")


def source_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """The files copied, relative to `root`: the allowlisted suffixes under DIRECTORIES (no hidden
    files or directories, no caches), and TOP_FILES."""
    found = [Path(name) for name in TOP_FILES if (root / name).is_file()]
    for directory in DIRECTORIES:
        for top, dirs, files in os.walk(root / directory):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in sorted(files):
                path = Path(top) / name
                if not name.startswith(".") and path.suffix in SUFFIXES and path.is_file() and not path.is_symlink():
                    found.append(path.relative_to(root))
    return found


def copy_own_source(target: Path, root: Path = PROJECT_ROOT) -> int:
    """Replace `target` with a fresh copy of the source (directories 0755, files 0644: the sandbox
    user reads them through the mount); returns how many files were copied."""
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o755)
    files = source_files(root)
    for rel in files:
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        shutil.copyfile(root / rel, dest)
        dest.chmod(0o644)
    for top, dirs, _ in os.walk(staging):
        for name in dirs:
            (Path(top) / name).chmod(0o755)
    staging.chmod(0o755)
    # Swap in place of the old copy; its directory is what running containers mount, so its
    # contents are replaced rather than the directory renamed when it exists.
    if target.is_dir():
        for child in target.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        for child in staging.iterdir():
            child.rename(target / child.name)
        staging.rmdir()
        target.chmod(0o755)
    else:
        staging.rename(target)
    log.info("copied %d files of this project's source to %s", len(files), target)
    return len(files)
