"""A receive buffer for framed messages from a sandbox: capped, and parsed in linear time.

Bytes are appended to one bytearray and consumed from a read offset; the consumed prefix is cut
once per batch, never per frame, and a frame still arriving is not rescanned. A header that is
not what the protocol says, or a frame announced larger than the cap, is a `ProtocolError`: the
caller drops the connection (and with it the executor) instead of buffering without end.
"""

from __future__ import annotations

MAX_FRAME = 32 * 1024 * 1024
"""Largest frame accepted: a 4 MiB file read, JSON-escaped, fits with room to spare."""
MAX_HEADER = 128


class ProtocolError(Exception):
    """The executor's output broke the framing; its connection is dropped."""


class FrameBuffer:
    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._data = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._data += data

    @property
    def pending(self) -> int:
        """Bytes received and not consumed yet."""
        return len(self._data) - self._pos

    def line(self) -> bytes | None:
        """The next header line (without its newline), or None until it is complete."""
        end = self._data.find(b"\n", self._pos, self._pos + MAX_HEADER + 1)
        if end < 0:
            if self.pending > MAX_HEADER:
                raise ProtocolError(f"no frame header in {bytes(self._data[self._pos:self._pos + 40])!r}…")
            return None
        line = bytes(self._data[self._pos:end])
        self._pos = end + 1
        return line

    def size(self, text: bytes) -> int:
        """A frame length from a header field, checked against the cap."""
        if not text.isdigit() or len(text) > 12:
            raise ProtocolError(f"bad frame length {text[:20]!r}")
        size = int(text)
        if size > self.max_frame:
            raise ProtocolError(f"a frame of {size:,} bytes announced; the limit is {self.max_frame:,}")
        return size

    def take(self, size: int) -> bytes | None:
        """The next `size` bytes, or None until they have all arrived."""
        if self.pending < size:
            return None
        chunk = bytes(self._data[self._pos:self._pos + size])
        self._pos += size
        return chunk

    def compact(self) -> None:
        """Drop what was consumed; called once after each batch of frames."""
        if self._pos:
            del self._data[:self._pos]
            self._pos = 0
