"""The model's streamed answer, read as the plain JSON it is.

The openai client turns every streamed chunk into typed objects (about 150 µs each on these
machines), which made the model call the costliest part of a busy service's event loop. The
request still goes through the client (retries, timeouts, status errors); only the body's
server-sent events are read here, and each chunk is checked for the few fields the loop uses.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
from openai._response import AsyncAPIResponse

from bot.agent.model import BadModelOutput

MALFORMED = "The model service sent a malformed answer, so this turn was ended."


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str | None


@dataclass(frozen=True, slots=True)
class Delta:
    content: str | None
    tool_calls: tuple[ToolCallDelta, ...]
    usage: dict[str, Any] | None = None
    """The request's token counts, in the chunk servers send last when asked (`include_usage`)."""


async def deltas(response: AsyncAPIResponse[Any]) -> AsyncIterator[Delta]:
    """Each choice's delta, in order, until `data: [DONE]` or the end of the body.

    Transport failures while reading become the client's own errors, as its typed stream does."""
    try:
        async for delta in _deltas(response):
            yield delta
    except httpx2.TimeoutException as exc:
        raise openai.APITimeoutError(request=response.http_request) from exc
    except httpx2.TransportError as exc:
        raise openai.APIConnectionError(request=response.http_request) from exc


async def _deltas(response: AsyncAPIResponse[Any]) -> AsyncIterator[Delta]:
    async for line in response.iter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise BadModelOutput(MALFORMED) from exc
        if not isinstance(chunk, dict):
            raise BadModelOutput(MALFORMED)
        if chunk.get("error"):  # an error reported inside the stream (some servers send `"error": null`)
            error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            raise openai.APIError(str(error.get("message") or "error in the stream"), response.http_request, body=error)
        for choice in _list(chunk.get("choices")):
            delta = _dict(_dict(choice).get("delta"))
            yield Delta(_text(delta.get("content")), tuple(_tool_call(tc) for tc in _list(delta.get("tool_calls"))))
        if isinstance(chunk.get("usage"), dict):
            yield Delta(None, (), chunk["usage"])


def _tool_call(raw: Any) -> ToolCallDelta:
    call = _dict(raw)
    function = _dict(call.get("function"))
    index = call.get("index", 0)
    if not isinstance(index, int):
        raise BadModelOutput(MALFORMED)
    return ToolCallDelta(index, _text(call.get("id")), _text(function.get("name")), _text(function.get("arguments")))


def _dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadModelOutput(MALFORMED)
    return value


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadModelOutput(MALFORMED)
    return value


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadModelOutput(MALFORMED)
