"""The egress proxy: its policy and address checks, the proxy over its Unix socket, and sandboxes
on the real Docker engine whose only way out it is."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import ValidationError

from bot.config import Settings, load_settings
from sandbox.egress import (
    SOCKET_NAME,
    EgressPolicy,
    EgressProxy,
    EgressRecord,
    EgressRefused,
    address_problem,
    apt_source_hosts,
    check_addresses,
    default_patterns,
)

# ---------------------------------------------------------------- policy and address checks


def test_patterns_match_hosts_ports_and_wildcards() -> None:
    policy = EgressPolicy.parse("github.com, *.example.com:8443, 127.0.0.1:5000, [::1]:7000, pypi.org:*")
    assert policy.check("github.com", 443).allowed and policy.check("GitHub.com.", 80).allowed
    assert not policy.check("github.com", 22).allowed, "no port: 80 and 443 only"
    assert not policy.check("api.github.com", 443).allowed, "an exact name is not a wildcard"
    assert policy.check("a.b.example.com", 8443).allowed and not policy.check("example.com", 8443).allowed
    assert not policy.check("a.example.com", 443).allowed
    assert policy.check("pypi.org", 1234).allowed
    assert policy.check("127.0.0.1", 5000).internal_ok and policy.check("[::1]", 7000).internal_ok
    assert not policy.check("127.0.0.1", 5001).allowed
    assert not policy.check("pypi.org", 443).internal_ok, "only a pattern naming the IP unlocks internal addresses"
    refused = policy.check("evil.test", 443)
    assert not refused.allowed and refused.reason == "not in SANDBOX_EGRESS_ALLOW"
    assert not policy.check("bad host!", 443).allowed
    wildcard = EgressPolicy.parse("*")
    assert wildcard.check("anything.test", 443).allowed and not wildcard.check("169.254.169.254", 80).internal_ok


@pytest.mark.parametrize("bad", ["http://github.com", "github.com:0", "github.com:99999", "git hub.com", "*github.com",
                                 "::1", "[::1", "a:b:c", "host:"])
def test_bad_patterns_are_refused_at_load(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(sandbox_egress_allow=f"pypi.org,{bad}", _env_file=None)  # type: ignore[call-arg]
    assert "sandbox_egress_allow" in str(err.value)


def test_settings_default_to_the_proxy_network() -> None:
    settings = load_settings(_env_file=None, sandbox_egress_allow=" GitHub.com ,*.Example.com:*")
    assert settings.sandbox_network == "proxy"
    assert settings.sandbox_egress_allow == "github.com,*.example.com:*"
    with pytest.raises(ValidationError):
        Settings(sandbox_network="bridges", _env_file=None)  # type: ignore[call-arg]


def test_internal_addresses_are_named() -> None:
    assert address_problem("127.0.0.1") == "loopback"
    assert address_problem("::1") == "loopback"
    assert address_problem("::ffff:127.0.0.1") == "loopback", "an IPv4-mapped address is its IPv4 address"
    assert address_problem("169.254.169.254") == "link-local"
    assert address_problem("fe80::1%eth0") == "link-local"
    assert address_problem("10.1.2.3") == "private range"
    assert address_problem("172.17.0.1") == "private range"
    assert address_problem("192.168.1.1") == "private range"
    assert address_problem("0.0.0.0") == "unspecified"
    assert address_problem("100.64.0.1") == "not a public address"
    assert address_problem("224.0.0.1") == "multicast"
    assert address_problem("151.101.0.223") is None
    assert address_problem("2a04:4e42::223") is None


def test_every_resolved_address_is_checked() -> None:
    named = EgressPolicy.parse("mirror.test")
    check_addresses("mirror.test", ["151.101.0.223"], named.check("mirror.test", 443))
    with pytest.raises(EgressRefused, match=r"resolves to 127\.0\.0\.1 \(loopback\)"):
        check_addresses("mirror.test", ["151.101.0.223", "127.0.0.1"], named.check("mirror.test", 443))
    with pytest.raises(EgressRefused, match="did not resolve"):
        check_addresses("mirror.test", [], named.check("mirror.test", 443))
    literal = EgressPolicy.parse("10.0.0.5:443")
    check_addresses("10.0.0.5", ["10.0.0.5"], literal.check("10.0.0.5", 443))


def test_default_allowlist_comes_from_clone_urls_and_apt_sources() -> None:
    one_line = ("deb http://mirror-a.test/debian bookworm main\n# deb http://commented.test/ x\n"
                "deb [arch=amd64] https://mirror-b.test:8080/x y z\n")
    deb822 = "Types: deb\nURIs: http://mirror-c.test/debian http://mirror-d.test/debian\nSuites: bookworm\n"
    assert apt_source_hosts(one_line) == ["mirror-a.test", "mirror-b.test:8080"]
    assert apt_source_hosts(deb822) == ["mirror-c.test", "mirror-d.test"]
    patterns = default_patterns(
        ["https://github.com/acme/api.git", "http://127.0.0.1:9999/acme/web.git", "git@github.com:acme/x.git",
         "git://127.0.0.1:9418/acme/y.git", "https://user:secret@git.test/acme/z.git"],
        [one_line, deb822],
    )
    assert patterns == ["github.com", "127.0.0.1:9999", "git.test", "mirror-a.test", "mirror-b.test:8080",
                        "mirror-c.test", "mirror-d.test", "pypi.org", "files.pythonhosted.org", "registry.npmjs.org"]
    EgressPolicy(patterns)  # every default is a valid pattern


# ---------------------------------------------------------------- the proxy over its Unix socket


@pytest.fixture
async def upstream():  # type: ignore[no-untyped-def]
    """A plain HTTP server on 127.0.0.1: GET /hello, POST /echo (any body framing)."""
    seen: list[dict[str, str]] = []

    async def hello(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="hello")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield Upstream(runner.addresses[0][1], seen)
    await runner.cleanup()


@dataclass
class Upstream:
    port: int
    seen: list[dict[str, str]]


@pytest.fixture
async def proxy(tmp_path: Path, upstream):  # type: ignore[no-untyped-def]
    egress = EgressProxy(tmp_path / "egress", EgressPolicy([f"127.0.0.1:{upstream.port}", f"localhost:{upstream.port}", "*:*"]))
    yield egress
    await egress.close()


async def ask(directory: Path, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(directory / SOCKET_NAME))
    writer.write(raw)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def observed(proxy: EgressProxy) -> list[tuple[str, EgressRecord]]:
    records: list[tuple[str, EgressRecord]] = []
    proxy.observe(lambda owner, record: records.append((owner, record)))
    return records


async def test_get_and_post_are_forwarded_to_an_allowed_server_and_reported(proxy, upstream):  # type: ignore[no-untyped-def]
    records = observed(proxy)
    directory = await proxy.open("c1", "pool")
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    port = upstream.port
    reply = await ask(directory, f"GET http://127.0.0.1:{port}/hello HTTP/1.1\r\nHost: elsewhere.test\r\n"
                                 f"Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"hello")
    first_reply = reply
    sent = upstream.seen[-1]
    assert sent["Host"] == f"127.0.0.1:{port}" and "Proxy-Authorization" not in sent and sent["Connection"] == "close"

    proxy.assign("c1", "session-7")
    body = b"x" * 100_000
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:60_000], body[60_000:])) + b"0\r\n\r\n"
    head = f"POST http://127.0.0.1:{port}/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    reply = await ask(directory, head + chunked)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(body)
    await asyncio.sleep(0.05)
    (owner1, first), (owner2, second) = records
    assert owner1 == "pool" and first.allowed and first.method == "GET" and first.address == "127.0.0.1"
    assert first.host == "127.0.0.1" and first.port == port and first.bytes_down == len(first_reply)
    assert owner2 == "session-7" and second.bytes_up > 100_000 and second.bytes_down > 100_000 and second.duration_s > 0


async def test_connect_tunnels_to_an_allowed_port(proxy, upstream):  # type: ignore[no-untyped-def]
    records = observed(proxy)
    directory = await proxy.open("c2")
    reply = await ask(directory, f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\nHost: x\r\n\r\n"
                                 "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK") and reply.endswith(b"hello")
    await asyncio.sleep(0.05)
    assert records[0][0] == "c2" and records[0][1].method == "CONNECT" and records[0][1].allowed


async def test_refusals_are_403_with_a_reason_and_reported(proxy, upstream):  # type: ignore[no-untyped-def]
    records = observed(proxy)
    directory = await proxy.open("c3", "session-1")
    cases = {
        # a name that resolves to loopback, although a pattern names it: only an IP pattern unlocks loopback
        f"CONNECT localhost:{upstream.port} HTTP/1.1\r\n\r\n": "resolves to",
        # `*` allows any name, never an internal address
        "CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n": "169.254.169.254 (link-local)",
        "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n": "link-local",
        "CONNECT 127.0.0.1:5432 HTTP/1.1\r\n\r\n": "127.0.0.1 (loopback)",
        "CONNECT 127.0.0.1:2375 HTTP/1.1\r\n\r\n": "loopback",
        "CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n": "private range",
        "CONNECT [::ffff:127.0.0.1]:22 HTTP/1.1\r\n\r\n": "loopback",
    }
    for request, reason in cases.items():
        reply = await ask(directory, request.encode())
        assert reply.startswith(b"HTTP/1.1 403 Forbidden"), (request, reply)
        assert b"text/plain" in reply and reason.encode() in reply, (request, reply)
    strict = EgressProxy(proxy.root, EgressPolicy([f"127.0.0.1:{upstream.port}"]))
    records_strict = observed(strict)
    try:
        strict_dir = await strict.open("c4", "session-2")
        reply = await ask(strict_dir, b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 403") and b"example.com:80 is not reachable" in reply
        assert b"not in SANDBOX_EGRESS_ALLOW" in reply
    finally:
        await strict.close()
    await asyncio.sleep(0.05)
    assert len(records) == len(cases) and all(owner == "session-1" and not r.allowed for owner, r in records)
    assert {r.host for _, r in records} == {"localhost", "169.254.169.254", "127.0.0.1", "10.0.0.1", "::ffff:7f00:1"}
    assert records_strict[0][0] == "session-2" and records_strict[0][1].reason == "not in SANDBOX_EGRESS_ALLOW"
    assert not upstream.seen, "nothing reached the upstream"


async def test_bad_input_gets_an_error_and_the_proxy_goes_on(proxy, upstream, caplog):  # type: ignore[no-untyped-def]
    directory = await proxy.open("c5")
    for raw, status in [
        (b"hello\r\n\r\n", b"400"),
        (b"PUT http://127.0.0.1/ HTTP/1.1\r\n\r\n", b"405"),
        (b"GET /relative HTTP/1.1\r\n\r\n", b"400"),
        (b"GET https://127.0.0.1/ HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n\r\n", b"400"),
        (b"GET http://a:b@127.0.0.1/ HTTP/1.1\r\n\r\n", b"400"),
        (b"GET http://127.0.0.1:99999/ HTTP/1.1\r\n\r\n", b"400"),
        (b"GET http://[::1/ HTTP/1.1\r\n\r\n", b"400"),
        (b"GET http://127.0.0.1/ HTTP/1.1\r\n folded: header\r\n\r\n", b"400"),
        (b"GET http://127.0.0.1/ HTTP/1.1\r\n" + b"X-Big: " + b"a" * 40_000 + b"\r\n\r\n", b"431"),
        (b"\xff\xfe\x00garbage\r\n\r\n", b"400"),
    ]:
        reply = await ask(directory, raw)
        assert reply.split(b" ")[1] == status, (raw[:40], reply)
    _, writer = await asyncio.open_unix_connection(str(directory / SOCKET_NAME))
    writer.write(b"GET http://127.0.0.1")  # and then goes away
    writer.close()
    reply = await ask(directory, f"GET http://127.0.0.1:{upstream.port}/hello HTTP/1.1\r\n\r\n".encode())
    assert reply.endswith(b"hello")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "bad input is the client's problem, not an error"


async def test_sockets_close_and_come_back_and_long_paths_work(tmp_path: Path, upstream) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / ("d" * 60) / ("e" * 60) / "egress"
    proxy = EgressProxy(root, EgressPolicy([f"127.0.0.1:{upstream.port}"]))
    directory = await proxy.open("long-path-key")
    assert len(str(directory / SOCKET_NAME)) > 108, "past sun_path's limit"
    request = f"GET http://127.0.0.1:{upstream.port}/hello HTTP/1.1\r\n\r\n".encode()
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        reader, writer = await asyncio.open_unix_connection(f"/proc/self/fd/{fd}/{SOCKET_NAME}")
        writer.write(request)
        assert (await reader.read()).endswith(b"hello")
        writer.close()
    finally:
        os.close(fd)
    inode = directory.stat().st_ino
    await proxy.close()
    assert directory.is_dir() and not (directory / SOCKET_NAME).exists(), "the directory stays for a running container"
    again = EgressProxy(root, proxy.policy)
    assert await again.open("long-path-key") == directory and directory.stat().st_ino == inode
    await again.close_socket("long-path-key")
    assert not directory.exists()
    with pytest.raises(ValueError):
        await again.open("../escape")
    await again.close()


async def test_an_observer_that_fails_does_not_break_the_proxy(proxy, upstream):  # type: ignore[no-untyped-def]
    def broken(owner: str, record: EgressRecord) -> None:
        raise RuntimeError("observer bug")

    seen: list[str] = []

    async def slow(owner: str, record: EgressRecord) -> None:
        await asyncio.sleep(0)
        seen.append(record.host)

    proxy.observe(broken)
    stop = proxy.observe(slow)
    directory = await proxy.open("c6")
    request = f"GET http://127.0.0.1:{upstream.port}/hello HTTP/1.1\r\n\r\n".encode()
    assert (await ask(directory, request)).endswith(b"hello")
    await asyncio.sleep(0.05)
    stop()
    assert (await ask(directory, request)).endswith(b"hello")
    await asyncio.sleep(0.05)
    assert seen == ["127.0.0.1"]


# ---------------------------------------------------------------- sandboxes on the real Docker engine

PROBE = r'''
import http.client, json, os, socket, sys, urllib.error, urllib.request

def direct(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "connected"
    except OSError as exc:
        return "failed: %s" % exc

def tunnel(host, port):
    conn = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
    conn.set_tunnel(host, port)
    try:
        conn.connect()
        return "connected"
    except OSError as exc:
        return "failed: %s" % exc

def get(url):
    try:
        return "ok %s" % urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as exc:
        return "%d %s" % (exc.code, exc.read().decode())
    except OSError as exc:
        return "failed: %s" % exc

def unix(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return "connected"
    except OSError as exc:
        return "failed: %s" % exc

print(json.dumps({
    "proxy_env": os.environ.get("HTTPS_PROXY"),
    "postgres_direct": direct("127.0.0.1", 5432),
    "postgres_tunnel": tunnel("127.0.0.1", 5432),
    "docker_tcp_tunnel": tunnel("127.0.0.1", 2375),
    "docker_socket": [unix("/var/run/docker.sock"), unix("/run/docker.sock")],
    "metadata_direct": direct("169.254.169.254", 80),
    "metadata_get": get("http://169.254.169.254/latest/meta-data/"),
    "other_get": get("http://example.com/"),
    "other_tunnel": tunnel("example.com", 443),
    "host_name_tunnel": tunnel("localhost", 5432),
}))
'''


@pytest.fixture
async def git_http(tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.fakes.git_http import GitHttpServer, bare_repo

    root = tmp_path / "git-http"
    root.mkdir()
    bare_repo(root, "acme/api", {"README.md": "# acme/api\n", "app.py": "def add(a, b):\n    return a + b\n"})
    async with GitHttpServer(root) as server:
        yield server


@pytest.fixture
async def pypi():  # type: ignore[no-untyped-def]
    from tests.fakes.pypi import FakePyPI

    async with FakePyPI() as index:
        index.add_wheel("tiny-pkg", "1.0")
        yield index


@pytest.fixture
async def sandbox(tmp_path: Path, docker_cleanup, git_http, pypi):  # type: ignore[no-untyped-def]
    """A `proxy`-network container allowed to reach the two test servers and nothing else."""
    from sandbox.backend import LABEL, SandboxLimits
    from sandbox.docker import DockerBackend
    from tests.sandbox_fixtures import BASE_IMAGE

    egress = EgressProxy(tmp_path / "data" / "egress", EgressPolicy([f"127.0.0.1:{git_http.port}", f"127.0.0.1:{pypi.port}"]))
    records = observed(egress)
    docker = DockerBackend(SandboxLimits(network="proxy", memory="512m", pids=256), egress=egress)
    ref = await docker.create(BASE_IMAGE, {f"{LABEL}.role": "test"})
    executor = await docker.executor(ref)
    yield docker, ref, executor, records
    await executor.close()
    await docker.remove(ref)
    assert not egress.is_open(ref.labels["hosted-agents.egress"])
    await egress.close()


async def test_from_inside_a_sandbox_only_allowed_servers_are_reachable(sandbox):  # type: ignore[no-untyped-def]
    from sandbox.protocol import Exec, Write

    docker, ref, ex, records = sandbox
    inspect = docker.api.inspect_container(ref.id)
    assert inspect["HostConfig"]["NetworkMode"] == "none"
    docker.assign_egress(ref, "session-42")
    await ex.call(Write(path="probe.py", content=PROBE))

    async def probe() -> dict:  # type: ignore[type-arg]
        result = await ex.call(Exec(cmd="python3 probe.py", timeout=60))
        assert result.exit_code == 0, result.output
        return json.loads(result.output)  # type: ignore[no-any-return]

    strict = await probe()  # only the two test servers are allowed
    assert strict["proxy_env"] == "http://127.0.0.1:3128"
    assert strict["postgres_direct"].startswith("failed"), "no network of its own: the host's loopback is not there"
    assert strict["metadata_direct"].startswith("failed")
    assert all(r.startswith("failed") for r in strict["docker_socket"]), "the Docker socket is not mounted"
    for name in ("postgres_tunnel", "docker_tcp_tunnel", "other_tunnel", "host_name_tunnel"):
        assert "403" in strict[name], (name, strict[name])
    for name in ("metadata_get", "other_get"):
        assert strict[name].startswith("403") and "not in SANDBOX_EGRESS_ALLOW" in strict[name], (name, strict[name])

    # Even a policy that allows every name and port never reaches an internal address.
    egress = docker.egress
    egress.policy = EgressPolicy([*egress.policy.patterns, "*:*"])
    records.clear()
    open_policy = await probe()
    for name in ("postgres_tunnel", "docker_tcp_tunnel", "host_name_tunnel", "metadata_get"):
        assert "403" in open_policy[name], (name, open_policy[name])
    assert "link-local" in open_policy["metadata_get"]
    await asyncio.sleep(0.1)
    refused = {(r.host, r.port): r for owner, r in records if not r.allowed}
    assert all(owner == "session-42" for owner, _ in records)
    assert "127.0.0.1 (loopback)" in refused[("127.0.0.1", 5432)].reason
    assert "loopback" in refused[("127.0.0.1", 2375)].reason
    assert "link-local" in refused[("169.254.169.254", 80)].reason
    assert "resolves to" in refused[("localhost", 5432)].reason, "a name resolving to loopback is refused"
    assert refused[("example.com", 443)].method == "CONNECT"  # no DNS here: "did not resolve"


async def test_git_clone_and_pip_download_pass_through_the_proxy(sandbox, git_http, pypi, docker_engine):  # type: ignore[no-untyped-def]
    import ensurepip

    from sandbox.protocol import Exec

    _, ref, ex, records = sandbox
    # The base image has no pip: the pip wheel Python ships (ensurepip's) runs straight from its zip.
    wheel = next((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(wheel, arcname="pip.whl")
    docker_engine.api.put_archive(ref.id, "/tmp", archive.getvalue())

    clone = await ex.call(Exec(cmd=f"git clone -q {git_http.url('acme/api')} /tmp/clone && cat /tmp/clone/app.py", timeout=60))
    assert clone.exit_code == 0, clone.output
    assert "return a + b" in clone.output
    assert any(r.path.endswith("git-upload-pack") for r in git_http.requests)

    download = await ex.call(Exec(
        cmd=f"python3 /tmp/pip.whl/pip download --no-cache-dir --disable-pip-version-check --no-deps "
            f"--index-url {pypi.index_url} --dest /tmp/dl tiny-pkg && ls /tmp/dl", timeout=90))
    assert download.exit_code == 0, download.output
    assert "tiny_pkg-1.0-py3-none-any.whl" in download.output
    assert "/files/tiny_pkg-1.0-py3-none-any.whl" in pypi.requests

    await asyncio.sleep(0.1)
    allowed = [r for owner, r in records if owner == "test" and r.allowed]
    assert {r.port for r in allowed} == {git_http.port, pypi.port}
    assert all(r.address == "127.0.0.1" and r.bytes_down > 0 and r.duration_s > 0 for r in allowed)
    assert sum(r.bytes_up for r in allowed if r.method == "POST") > 0, "git's upload-pack POSTs went through"


async def test_an_image_build_clones_through_the_proxy_with_the_default_allowlist(tmp_path: Path, docker_cleanup, git_http):  # type: ignore[no-untyped-def]
    from bot.repos import load_repos
    from bot.store.db import Database
    from sandbox.stack import SandboxStack
    from tests.sandbox_fixtures import BASE_IMAGE, repos_yaml

    repos = repos_yaml(tmp_path / "repos.yml", git_http.url("acme/api"))
    settings = load_settings(_env_file=None, data_dir=str(tmp_path / "data"), repos_config=str(repos),
                             image_rebuild_interval=0)
    assert settings.sandbox_network == "proxy" and settings.sandbox_egress_allow == ""
    db = Database(settings.database_url)
    await db.upgrade()
    catalog = load_repos(settings.repos_config, settings.git_clone_url)
    stack = SandboxStack(settings, db, catalog)
    try:
        assert stack.egress is not None
        records = observed(stack.egress)
        defaults = await stack.default_egress()
        # The Debian mirrors come from the image's own apt sources, whatever they name.
        client = __import__("docker").from_env()
        cat = "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null; true"
        sources = client.containers.run(BASE_IMAGE, ["sh", "-c", cat], network_mode="none", remove=True).decode()
        mirrors = apt_source_hosts(sources)
        assert mirrors and all(m in defaults for m in mirrors)
        assert defaults[0] == f"127.0.0.1:{git_http.port}" and "pypi.org" in defaults and "registry.npmjs.org" in defaults
        stack.egress.policy = EgressPolicy(defaults)

        tag = await stack.images.build(catalog.repos[0])
        assert tag.startswith("hosted-agents/acme-api:")
        await asyncio.sleep(0.1)
        clones = [(owner, r) for owner, r in records if r.port == git_http.port]
        assert clones and all(owner == "build" and r.allowed for owner, r in clones)
        assert not any((tmp_path / "data" / "egress").iterdir()), "the build container's socket went with it"
    finally:
        await stack.close()
        await db.close()


async def test_a_container_that_outlives_the_service_gets_its_way_out_back(tmp_path: Path, docker_cleanup, git_http):  # type: ignore[no-untyped-def]
    """A warm container adopted by the next run: same socket directory (its bind mount), a new socket."""
    from sandbox.backend import LABEL, SandboxLimits
    from sandbox.docker import EGRESS_LABEL, DockerBackend
    from sandbox.protocol import Exec
    from tests.sandbox_fixtures import BASE_IMAGE

    policy = EgressPolicy([f"127.0.0.1:{git_http.port}"])
    clone = Exec(cmd=f"rm -rf /tmp/c && git clone -q {git_http.url('acme/api')} /tmp/c && echo cloned", timeout=60)
    first = EgressProxy(tmp_path / "data" / "egress", policy)
    docker = DockerBackend(SandboxLimits(network="proxy", memory="512m", pids=256), egress=first)
    ref = await docker.create(BASE_IMAGE, {f"{LABEL}.role": "pool"})
    ex = await docker.executor(ref)
    assert (await ex.call(clone)).output == "cloned\n"
    await ex.close()
    await first.close()  # the service stops; the container keeps running

    again = EgressProxy(tmp_path / "data" / "egress", policy)
    records = observed(again)
    restarted = DockerBackend(SandboxLimits(network="proxy", memory="512m", pids=256), egress=again)
    (found,) = await restarted.find({f"{LABEL}.role": "pool", EGRESS_LABEL: ref.labels[EGRESS_LABEL]})
    ex = await restarted.executor(found)
    try:
        result = await ex.call(clone)
        assert result.output == "cloned\n", result.output
        await asyncio.sleep(0.1)
        assert records and all(owner == "pool" and r.allowed for owner, r in records)
    finally:
        await ex.close()
        await restarted.remove(found)
        await again.close()
    assert not (tmp_path / "data" / "egress" / ref.labels[EGRESS_LABEL]).exists()
