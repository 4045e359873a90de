"""A tiny PEP 503 simple index on 127.0.0.1, so the real pip downloads from it unchanged.

`/simple/` lists the projects, `/simple/<name>/` links each file with its `#sha256=`, and
`/files/<filename>` serves it. `make_wheel` builds a valid minimal wheel with the standard
library (zipfile), so no package is fetched from anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
import zipfile

from aiohttp import web


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def make_wheel(name: str, version: str, module_source: str = "VALUE = 42\n") -> tuple[str, bytes]:
    """(filename, bytes) of a pure-Python wheel holding one module named after the project."""
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": module_source.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests.fakes.pypi\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return f"{dist}-{version}-py3-none-any.whl", buffer.getvalue()


class FakePyPI:
    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port = 0
        self.files: dict[str, dict[str, bytes]] = {}
        """project (normalised) -> filename -> content"""
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def index_url(self) -> str:
        return f"http://{self.host}:{self.port}/simple/"

    def add(self, name: str, filename: str, content: bytes) -> None:
        self.files.setdefault(normalise(name), {})[filename] = content

    def add_wheel(self, name: str, version: str) -> str:
        filename, content = make_wheel(name, version)
        self.add(name, filename, content)
        return filename

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/simple/", self._index)
        app.router.add_get("/simple/{project}/", self._project)
        app.router.add_get("/files/{filename}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakePyPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _index(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        links = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in sorted(self.files))
        return web.Response(text=f"<!DOCTYPE html><html><body>\n{links}</body></html>\n", content_type="text/html")

    async def _project(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        project = request.match_info["project"]
        if normalise(project) != project:
            raise web.HTTPMovedPermanently(f"/simple/{normalise(project)}/")
        files = self.files.get(project)
        if files is None:
            raise web.HTTPNotFound()
        links = "".join(
            f'<a href="/files/{html.escape(name)}#sha256={hashlib.sha256(data).hexdigest()}">{html.escape(name)}</a>\n'
            for name, data in sorted(files.items())
        )
        return web.Response(text=f"<!DOCTYPE html><html><body>\n{links}</body></html>\n", content_type="text/html")

    async def _file(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        name = request.match_info["filename"]
        for files in self.files.values():
            if name in files:
                return web.Response(body=files[name], content_type="application/octet-stream")
        raise web.HTTPNotFound()
