"""A real git remote over smart HTTP: `git http-backend` as CGI behind aiohttp on 127.0.0.1.

Clone, fetch (protocol v0/v1/v2, gzip request bodies, chunked uploads) and, with `push=True`,
push (`http.receivepack`). Request bodies stream into the CGI and its output streams back, so
big packs never sit in memory. Every request is recorded (method, path, status) for assertions.
`handle(request, path_info)` serves one request, so a larger fake (GitHub) can mount it on its
own routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

GIT_ENV = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.com"}


@dataclass
class GitRequest:
    method: str
    path: str
    query: str
    status: int


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def bare_repo(root: Path, name: str, files: dict[str, str], branch: str = "main") -> Path:
    """root/<name>.git, a bare repository with one commit of `files` on `branch`."""
    bare = root / f"{name}.git"
    bare.mkdir(parents=True)
    git(bare, "init", "-q", "--bare", "-b", branch)
    work = root.parent / f".work-{name.replace('/', '-')}"
    git(root.parent, "init", "-q", "-b", branch, str(work))
    for path, content in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(content)
    git(work, "add", "-A")
    git(work, "commit", "-qm", "initial")
    git(work, "push", "-q", str(bare), branch)
    return bare


class GitHttpServer:
    def __init__(self, root: Path, push: bool = False, host: str = "127.0.0.1", port: int = 0):
        self.root = root
        self.push = push
        self.host = host
        self.port = port
        self.requests: list[GitRequest] = []
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, name: str) -> str:
        """Clone URL of root/<name>.git."""
        return f"{self.base_url}/{name}.git"

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 40)
        async def route(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, "/" + request.match_info["path"])

        app.router.add_route("*", "/{path:.*}", route)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> GitHttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def handle(self, request: web.Request, path_info: str) -> web.StreamResponse:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": path_info,
            "QUERY_STRING": request.query_string,
            "REMOTE_ADDR": request.remote or "127.0.0.1",
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        }
        if request.content_length is not None:
            env["CONTENT_LENGTH"] = str(request.content_length)
        for name, value in request.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_AUTHORIZATION"):
                env[key] = value
        if self.push:
            env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.receivepack", "GIT_CONFIG_VALUE_0": "true"})
        proc = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None
        feeding = asyncio.ensure_future(self._feed(request, proc.stdin))
        try:
            head = await _cgi_head(proc.stdout)
            status, headers = 200, {}
            for line in head:
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                else:
                    headers[name.strip()] = value.strip()
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            while chunk := await proc.stdout.read(65536):
                await response.write(chunk)
            await response.write_eof()
            await asyncio.wait_for(proc.wait(), 30)
            self.requests.append(GitRequest(request.method, path_info, request.query_string, status))
            return response
        finally:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await feeding
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    @staticmethod
    async def _feed(request: web.Request, stdin: asyncio.StreamWriter) -> None:
        try:
            while chunk := await request.content.read(65536):
                stdin.write(chunk)
                await stdin.drain()
        finally:
            stdin.close()


async def _cgi_head(stdout: asyncio.StreamReader) -> list[str]:
    """The CGI's header lines (ended by an empty line, LF or CRLF)."""
    lines = []
    while True:
        line = (await stdout.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            return lines
        lines.append(line)
