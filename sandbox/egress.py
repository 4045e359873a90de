"""The egress proxy: the only way out of a `proxy`-network sandbox.

A sandbox has no network of its own. A forwarder inside it (sandbox/egress_forwarder.py) listens
on 127.0.0.1:3128 and splices each connection to a Unix socket this proxy listens on, one socket
per container (so the proxy knows whose connection it is without trusting anything the container
says). The proxy speaks just enough HTTP/1.1 for `HTTP(S)_PROXY` clients: CONNECT tunnels and
absolute-URI GET/HEAD/POST forwarding (POST because git's smart HTTP fetches with it). A
destination must match SANDBOX_EGRESS_ALLOW, and every address its name resolves to must be a
public one, unless the pattern names that exact IP: so a name pointing at 127.0.0.1, the cloud
metadata address or a private range is refused, and the proxy connects to the address it checked
(no second lookup a rebinding DNS server could answer differently). Each connection is reported
to observers as an `EgressRecord`; nothing of a request but its host and port is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.config import egress_pattern

log = logging.getLogger(__name__)

SOCKET_NAME = "proxy.sock"
MAX_HEAD = 32 * 1024
"""Longest request line plus headers a client may send (a bigger head is refused with 431)."""
PYPI = ["pypi.org", "files.pythonhosted.org"]
NPM = ["registry.npmjs.org"]
_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
               "te", "trailer", "upgrade", "host"}
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressRefused(Exception):
    """A destination the policy or the address check turns down; the message says why."""


@dataclass(frozen=True)
class EgressPattern:
    host: str
    ports: frozenset[int] | None

    @classmethod
    def parse(cls, text: str) -> EgressPattern:
        return cls(*egress_pattern(text))

    @property
    def is_ip(self) -> bool:
        return _ip(self.host) is not None

    def matches(self, host: str, port: int) -> bool:
        if self.ports is not None and port not in self.ports:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and _ip(host) is None
        return host == self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.ports is None:
            return f"{host}:*"
        if len(self.ports) == 1:
            return f"{host}:{next(iter(self.ports))}"
        return host


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    internal_ok: bool = False
    """A pattern names this exact IP: loopback or private is then allowed (test servers, on-prem hosts)."""


class EgressPolicy:
    """Which host:port a sandbox may reach: the SANDBOX_EGRESS_ALLOW patterns."""

    def __init__(self, patterns: Iterable[str | EgressPattern]):
        parsed = [p if isinstance(p, EgressPattern) else EgressPattern.parse(p) for p in patterns]
        self.patterns: tuple[EgressPattern, ...] = tuple(dict.fromkeys(parsed))

    @classmethod
    def parse(cls, text: str) -> EgressPolicy:
        return cls(item for item in text.split(",") if item.strip())

    def check(self, host: str, port: int) -> Decision:
        """The decision on a name alone; addresses are checked after the lookup (`check_addresses`)."""
        try:
            host = normalise_host(host)
        except ValueError as exc:
            return Decision(False, str(exc))
        if not 0 < port < 65536:
            return Decision(False, f"port {port} is out of range")
        matching = [p for p in self.patterns if p.matches(host, port)]
        if not matching:
            return Decision(False, "not in SANDBOX_EGRESS_ALLOW")
        return Decision(True, f"allowed by {matching[0]}", internal_ok=any(p.is_ip and p.host == host for p in matching))

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.patterns)


def normalise_host(host: str) -> str:
    """Lower case, no brackets or trailing dot, IP literals in their canonical form."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.rstrip(".")
    ip = _ip(host)
    if ip is not None:
        return ip.compressed
    if not host or len(host) > 253 or not re.fullmatch(r"[a-z0-9_.-]+", host):
        raise ValueError("not a valid host name")
    return host


def _ip(text: str) -> IP | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def address_problem(address: str) -> str | None:
    """Why a sandbox may not reach this address unless a pattern names it, or None for a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for flag, what in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"), ("is_link_local", "link-local"),
                       ("is_multicast", "multicast"), ("is_private", "private range"), ("is_reserved", "reserved range")):
        if getattr(ip, flag):
            return what
    return None if ip.is_global else "not a public address"


def check_addresses(host: str, addresses: list[str], decision: Decision) -> None:
    """Every address a name resolves to must be public (a name could mix in 127.0.0.1); raises EgressRefused."""
    if not addresses:
        raise EgressRefused(f"{host} did not resolve")
    if decision.internal_ok:
        return
    for address in addresses:
        problem = address_problem(address)
        if problem:
            raise EgressRefused(f"{host} resolves to {address} ({problem})")


@dataclass(frozen=True)
class EgressRecord:
    """One connection through the proxy, reported when it ends (a refusal at once)."""

    host: str
    port: int
    method: str
    allowed: bool
    reason: str
    bytes_up: int = 0
    """From the sandbox to the destination."""
    bytes_down: int = 0
    duration_s: float = 0.0
    address: str | None = None
    """The address connected to, when one was."""
    started_at: float = 0.0
    """Wall-clock time the request arrived."""


Observer = Callable[[str, EgressRecord], object]


class _Request:
    def __init__(self, method: str, host: str, port: int, head: bytes | None):
        self.method, self.host, self.port, self.head = method, host, port, head


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, host: str = "", port: int = 0, method: str = ""):
        super().__init__(message)
        self.status, self.host, self.port, self.method = status, host, port, method


class EgressProxy:
    """One Unix listening socket per container under `root` (mode 0700), one policy for all."""

    def __init__(self, root: Path, policy: EgressPolicy, *, connect_timeout: float = 10.0, head_timeout: float = 30.0,
                 idle_timeout: float = 300.0, max_connections: int = 256):
        self.root = root.resolve()
        self.policy = policy
        """Replaceable at any time: new connections use the current one."""
        self.connect_timeout = connect_timeout
        self.head_timeout = head_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._servers: dict[str, asyncio.Server] = {}
        self._owners: dict[str, str] = {}
        self._handlers: dict[str, set[asyncio.Task[Any]]] = {}
        self._observers: list[Observer] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def socket_dir(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"egress key {key!r}: lower-case letters, digits, - and _ only")
        return self.root / key

    def is_open(self, key: str) -> bool:
        return key in self._servers

    async def open(self, key: str, owner: str = "") -> Path:
        """Listen on `root/key/proxy.sock` (again, after a restart: the directory is kept so a running
        container's bind mount still shows the new socket); returns the directory to mount."""
        directory = self.socket_dir(key)
        if owner:
            self._owners[key] = owner
        if key in self._servers:
            return directory
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self._servers[key] = await asyncio.start_unix_server(
            partial(self._handle, key), sock=_bind_unix(directory, SOCKET_NAME), limit=MAX_HEAD)
        self._handlers[key] = set()
        return directory

    def assign(self, key: str, owner: str) -> None:
        """Report this socket's connections for `owner` from now on (e.g. a session claiming a warm container)."""
        self._owners[key] = owner

    def owner(self, key: str) -> str:
        return self._owners.get(key, key)

    async def close_socket(self, key: str, remove: bool = True) -> None:
        """Stop listening for a container and end its connections; `remove` deletes its directory."""
        server = self._servers.pop(key, None)
        handlers = self._handlers.pop(key, set())
        if server is not None:
            server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        self._owners.pop(key, None)
        if not _KEY.fullmatch(key):
            return  # never a path of ours: nothing to remove
        directory = self.socket_dir(key)
        if remove:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                (directory / SOCKET_NAME).unlink()

    async def close(self) -> None:
        """Stop every socket but keep their directories: containers that outlive the service get
        their socket back when the next run adopts them."""
        for key in list(self._servers):
            await self.close_socket(key, remove=False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def observe(self, callback: Observer) -> Callable[[], None]:
        """Call `callback(owner, record)` for every connection; returns a function that stops it.
        A callback returning an awaitable is run as a task; its errors are logged, never raised."""
        self._observers.append(callback)
        return lambda: self._observers.remove(callback) if callback in self._observers else None

    def _report(self, owner: str, record: EgressRecord) -> None:
        if record.allowed:
            log.debug("egress %s %s:%d %s up=%d down=%d", owner, record.host, record.port, record.reason,
                      record.bytes_up, record.bytes_down)
        else:
            log.info("egress refused for %s: %s %s:%d (%s)", owner, record.method, record.host, record.port, record.reason)
        for callback in list(self._observers):
            try:
                result = callback(owner, record)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._observed)
            except Exception:
                log.exception("an egress observer failed")

    def _observed(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("an egress observer failed: %r", task.exception())

    async def _handle(self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        handlers = self._handlers.get(key)
        if task is None or handlers is None:
            writer.close()
            return
        handlers.add(task)
        try:
            if len(handlers) > self.max_connections:
                await _respond(writer, 503, "too many connections from this sandbox at once")
                return
            await self._serve(key, reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("egress proxy connection failed")
        finally:
            handlers.discard(task)
            writer.close()

    async def _serve(self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started, wall = time.monotonic(), time.time()
        owner = self.owner(key)  # whoever had the container when the connection came in
        try:
            request = await self._read_request(reader)
        except _BadRequest as exc:
            await _respond(writer, exc.status, str(exc))
            if exc.host:
                self._report(owner, EgressRecord(exc.host, exc.port, exc.method, False, str(exc), started_at=wall))
            return
        if request is None:
            return
        record = partial(EgressRecord, request.host, request.port, request.method, started_at=wall)
        decision = self.policy.check(request.host, request.port)
        try:
            if not decision.allowed:
                raise EgressRefused(decision.reason)
            upstream_reader, upstream_writer, address = await self._connect(request.host, request.port, decision)
        except EgressRefused as exc:
            await _respond(writer, 403, f"{request.host}:{request.port} is not reachable from this sandbox: {exc}. "
                                        "Allowed destinations are set by SANDBOX_EGRESS_ALLOW.")
            self._report(owner, record(False, str(exc), duration_s=time.monotonic() - started))
            return
        except (OSError, TimeoutError) as exc:
            reason = "connection timed out" if isinstance(exc, TimeoutError) else f"connection failed ({exc.strerror or exc})"
            await _respond(writer, 502, f"{request.host}:{request.port}: {reason}")
            self._report(owner, record(True, reason, duration_s=time.monotonic() - started))
            return
        try:
            if request.head is None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream_writer.write(request.head)
            counts = await _splice(reader, writer, upstream_reader, upstream_writer, self.idle_timeout)
        finally:
            upstream_writer.close()
        up, down = counts
        self._report(owner, record(True, decision.reason, bytes_up=up + len(request.head or b""), bytes_down=down,
                                 duration_s=time.monotonic() - started, address=address))

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "not an HTTP/1.x proxy request")
        method, target, _ = parts
        if method == "CONNECT":
            host, port = _authority(target, None)
            return _Request(method, host, port, None)
        if method not in ("GET", "HEAD", "POST"):
            raise _BadRequest(405, f"method {method[:20]} is not allowed through the egress proxy (CONNECT, GET, HEAD, POST)")
        try:
            url = urlsplit(target)
        except ValueError:
            raise _BadRequest(400, "not a valid URL") from None
        if url.scheme != "http" or not url.netloc:
            raise _BadRequest(400, "a proxy request needs an absolute http:// URL (https goes through CONNECT)")
        if "@" in url.netloc:
            raise _BadRequest(400, "credentials in the URL are not forwarded")
        host, port = _authority(url.netloc, 80)
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, "a malformed header line", host, port, method)
            if name.lower() not in _HOP_BY_HOP:
                headers.append(f"{name}:{value}")
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        rebuilt = "\r\n".join([f"{method} {path} HTTP/1.1", f"Host: {url.netloc}", *headers, "Connection: close", "", ""])
        return _Request(method, host, port, rebuilt.encode("latin-1"))

    async def _connect(self, host: str, port: int, decision: Decision) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """Resolve once, check every address, connect to a checked one."""
        name = normalise_host(host)
        if _ip(name) is not None:
            addresses = [name]
        else:
            try:
                infos = await asyncio.wait_for(
                    asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
                    self.connect_timeout)
            except (OSError, TimeoutError):
                raise EgressRefused(f"{name} did not resolve") from None
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        check_addresses(name, addresses, decision)
        last: BaseException = OSError(f"no address for {name}")
        for address in addresses:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), self.connect_timeout)
                return reader, writer, address
            except (OSError, TimeoutError) as exc:
                last = exc
        raise last


def _authority(text: str, default_port: int | None) -> tuple[str, int]:
    """host:port of a CONNECT target or a URL's netloc."""
    host, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        host, port = text[1:end], text[end + 2 :] if end > 0 else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not port and default_port is None:
        raise _BadRequest(400, "CONNECT needs host:port")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise _BadRequest(400, "not a valid port")
    try:
        host = normalise_host(host)
    except ValueError:
        raise _BadRequest(400, "not a valid host") from None
    return host, int(port) if port else int(default_port or 0)


async def _respond(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    reasons = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
               502: "Bad Gateway", 503: "Service Unavailable"}
    body = f"hosted-agents egress proxy: {message}\n".encode()
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write(f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()


async def _splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up_reader: asyncio.StreamReader,
                  up_writer: asyncio.StreamWriter, idle_timeout: float) -> tuple[int, int]:
    """Copy both ways until both sides are done or neither moved for `idle_timeout`; returns (up, down) bytes."""
    last = [time.monotonic()]
    counts = [0, 0]

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, index: int) -> None:
        try:
            while True:
                try:
                    data = await asyncio.wait_for(src.read(65536), idle_timeout)
                except TimeoutError:
                    if time.monotonic() - last[0] >= idle_timeout:
                        raise
                    continue
                if not data:
                    break
                counts[index] += len(data)
                last[0] = time.monotonic()
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, TimeoutError, OSError):
            dst.close()
            raise

    up = asyncio.ensure_future(pipe(reader, up_writer, 0))
    down = asyncio.ensure_future(pipe(up_reader, writer, 1))
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if up.done() and not down.done() and up.exception() is None:
            await asyncio.wait({down})  # the request is sent: wait for the whole answer
        # Otherwise the destination has said all it will (or a side broke): the tunnel is over.
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
    return counts[0], counts[1]


def _bind_unix(directory: Path, name: str) -> socket.socket:
    """A listening Unix socket at directory/name, however long the path (sun_path holds ~107 bytes:
    a long DATA_DIR is reached through /proc/self/fd)."""
    path = directory / name
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(path)) < 100:
            sock.bind(os.fspath(path))
        else:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                sock.bind(f"/proc/self/fd/{fd}/{name}")
            finally:
                os.close(fd)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def apt_source_hosts(text: str) -> list[str]:
    """Host[:port] of every http(s) mirror in apt sources, one-line (`deb URL ...`) or deb822 (`URIs:`)."""
    hosts: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        words = line.split()
        if not words:
            continue
        if words[0] in ("deb", "deb-src"):
            uris = [w for w in words[1:] if "://" in w][:1]
        elif words[0].lower() == "uris:":
            uris = words[1:]
        else:
            continue
        for uri in uris:
            pattern = url_host_pattern(uri)
            if pattern and pattern not in hosts:
                hosts.append(pattern)
    return hosts


def url_host_pattern(url: str) -> str | None:
    """The allow pattern for an http(s) URL's host (with its port when it names one), else None:
    git over ssh or git:// cannot pass an HTTP proxy."""
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def default_patterns(clone_urls: Iterable[str], apt_sources: Iterable[str]) -> list[str]:
    """The allowlist when SANDBOX_EGRESS_ALLOW is empty: git hosts of the repositories, PyPI, npm,
    and the Debian mirrors the base images name in their own apt sources."""
    patterns: list[str] = []
    for url in clone_urls:
        pattern = url_host_pattern(url)
        if pattern is None:
            log.warning("clone URL %s cannot pass the egress proxy (only http:// and https:// can); "
                        "use an https URL or SANDBOX_NETWORK=host/bridge", _redact(url))
        elif pattern not in patterns:
            patterns.append(pattern)
    for text in apt_sources:
        patterns.extend(h for h in apt_source_hosts(text) if h not in patterns)
    patterns.extend(h for h in [*PYPI, *NPM] if h not in patterns)
    return patterns


def _redact(url: str) -> str:
    """A URL without any user:password@ part, for logs."""
    return re.sub(r"//[^/@]*@", "//", url)
