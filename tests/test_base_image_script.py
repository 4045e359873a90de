"""scripts/build-base-image.sh takes its package mirror from DEBIAN_MIRROR or this machine's apt
sources, and from nowhere else."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "build-base-image.sh"

DEB822 = """\
Types: deb
# http://127.0.0.2/not-this-one (a comment)
URIs: http://127.0.0.1:3142/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
URIs: http://127.0.0.1:3142/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://127.0.0.3/disabled
Suites: bookworm
Enabled: no
"""

CLASSIC = """\
# deb http://127.0.0.2/commented bookworm main
deb-src http://127.0.0.2/source-only bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://127.0.0.1:3142/other bookworm-backports main
deb [signed-by=/usr/share/keyrings/k.gpg] http://127.0.0.1:3142/classic bookworm main contrib
"""


def mirror(tmp_path: Path, sources: str | None, classic: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    d = tmp_path / "sources.list.d"
    d.mkdir(exist_ok=True)
    if sources is not None:
        (d / "debian.sources").write_text(sources)
    if classic is not None:
        (tmp_path / "sources.list").write_text(classic)
    environment = {"PATH": os.environ["PATH"], "APT_SOURCES_DIR": str(d), "APT_SOURCES_LIST": str(tmp_path / "sources.list")}
    environment.update(env)
    return subprocess.run(["bash", str(SCRIPT), "--print-mirror"], env=environment, capture_output=True, text=True, timeout=30)


def test_the_mirror_of_the_suite_comes_from_deb822_sources(tmp_path):
    found = mirror(tmp_path, DEB822, CLASSIC)
    assert (found.returncode, found.stdout) == (0, "http://127.0.0.1:3142/debian\n")


def test_classic_sources_list_lines_are_read_when_there_is_no_deb822_file(tmp_path):
    found = mirror(tmp_path, None, CLASSIC)
    assert (found.returncode, found.stdout) == (0, "http://127.0.0.1:3142/classic\n")


def test_debian_mirror_wins(tmp_path):
    found = mirror(tmp_path, DEB822, CLASSIC, DEBIAN_MIRROR="http://127.0.0.1:9/mine")
    assert found.stdout == "http://127.0.0.1:9/mine\n"


def test_no_configured_mirror_is_a_clear_error_not_a_guess(tmp_path):
    found = mirror(tmp_path, "Types: deb-src\nURIs: http://127.0.0.2/src\nSuites: bookworm\n", "# nothing\n")
    assert found.returncode != 0 and found.stdout == ""
    assert "no package mirror: set DEBIAN_MIRROR" in found.stderr


def test_no_mirror_hostname_is_written_into_the_scripts():
    domains = [".".join(("debian", "org")), ".".join(("ubuntu", "com"))]  # spelled so that a grep finds none here either
    for path in SCRIPT.parent.iterdir():
        assert not any(domain in path.read_text() for domain in domains), path
