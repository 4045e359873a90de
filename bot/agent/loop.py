"""The tool-calling loop: stream a model step, run the tools it asked for, repeat until it answers.

It reads top to bottom: `run_turn` → `_step` (one streamed completion) → tools. Everything it
does is emitted as an event; it keeps no state of its own between turns.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from openai import APITimeoutError, AsyncOpenAI, omit
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from bot.agent import stream
from bot.agent.context import SUMMARY_INSTRUCTIONS, Budget, ContextBudget, History, TokenCounter
from bot.agent.model import BadModelOutput, ModelStalled, StepLimitReached
from bot.agent.tools import Emit, ToolContext, ToolRegistry
from bot.config import Price
from bot.events import AssistantMessage, ModelCall, TextDelta, ToolCalled, ToolCallSpec, ToolResult


@dataclass
class TurnStats:
    started: float = field(default_factory=time.monotonic)
    first_token_ms: float | None = None
    request_ms: float | None = None
    """Until the first model request went out: the infrastructure's part of the first token."""
    tokens: int = 0
    cost_usd: float | None = None
    deltas: int = 0
    """Pieces of answer received so far (a step that stalled before any may be asked again)."""

    def token(self) -> None:
        self.deltas += 1
        if self.first_token_ms is None:
            self.first_token_ms = (time.monotonic() - self.started) * 1000

    def request(self) -> None:
        if self.request_ms is None:
            self.request_ms = (time.monotonic() - self.started) * 1000

    def add(self, call: ModelCall) -> None:
        self.tokens += call.prompt_tokens + call.completion_tokens
        if call.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + call.cost_usd


class Agent:
    def __init__(self, client: Callable[[], AsyncOpenAI], model: str, tools: ToolRegistry, max_steps: int,
                 prices: dict[str, Price] | None = None, budget: Budget | None = None,
                 fast_model: str | None = None, fast_window: int = 128_000):
        self._client = client
        self.model = model
        self.tools = tools
        self.max_steps = max_steps
        self.prices = prices or {}
        self.fast_model = fast_model or model
        self.context = (ContextBudget(budget, TokenCounter(model), self._summarise, fast_window)
                        if budget is not None else None)
        """Keeps each request under the model's context window; None: requests grow with the session."""

    def load_tokenizer(self) -> None:
        """Blocking (reads or downloads tiktoken's encoding): run it in a thread at start-up."""
        if self.context is not None:
            self.context.counter.load()

    async def run_turn(self, messages: list[dict[str, Any]], ctx: ToolContext, stats: TurnStats,
                       history: History | None = None) -> None:
        """`history` reads the session's history events from its log, for compacting the context."""
        retried = False
        for _ in range(self.max_steps):
            if self.context is not None and history is not None:
                specs = self.tools.specs(workspace=ctx.workspace is not None)
                messages = await self.context.fit(ctx.session_id, messages, specs, history, ctx.emit)
            received = stats.deltas
            try:
                content, calls = await self._step(messages, ctx, stats)
            except APITimeoutError as exc:
                if retried or stats.deltas != received:
                    # stalled again, or mid-answer (what arrived is already in the log): the turn ends
                    raise ModelStalled(1, partial=stats.deltas != received) from exc
                retried = True  # a stream that stalled before its first piece is asked once more
                received = stats.deltas
                try:
                    content, calls = await self._step(messages, ctx, stats)
                except APITimeoutError as again:
                    raise ModelStalled(2, partial=stats.deltas != received) from again
            assistant: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                assistant["tool_calls"] = [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in calls
                ]
            messages.append(assistant)
            if not calls:
                return
            if len(calls) > 1 and all(self.tools.read_only(c["name"]) for c in calls):
                # Reads change nothing: run them at once, answer in the model's order.
                for call in calls:
                    ctx.emit(ToolCalled(id=call["id"], name=call["name"], arguments=call["arguments"]))
                outcomes = await asyncio.gather(*(self.tools.call(c["name"], c["arguments"], ctx) for c in calls))
                for call, outcome in zip(calls, outcomes, strict=True):
                    ctx.emit(ToolResult(id=call["id"], name=call["name"], ok=outcome.ok, output=outcome.output))
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": outcome.output})
                continue
            for call in calls:  # writes and commands (and a lone read): one after another
                ctx.emit(ToolCalled(id=call["id"], name=call["name"], arguments=call["arguments"]))
                outcome = await self.tools.call(call["name"], call["arguments"], ctx)
                ctx.emit(ToolResult(id=call["id"], name=call["name"], ok=outcome.ok, output=outcome.output))
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": outcome.output})
        raise StepLimitReached(self.max_steps)

    async def _step(
        self, messages: list[dict[str, Any]], ctx: ToolContext, stats: TurnStats
    ) -> tuple[str, list[dict[str, str]]]:
        """One streamed completion; whatever arrived is logged even if the stream is cut."""
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finished = False
        deltas = _Deltas(ctx)
        usage: dict[str, Any] | None = None
        began = time.monotonic()
        specs = self.tools.specs(workspace=ctx.workspace is not None)
        try:
            # The conversation is plain dicts rebuilt from the log; the API checks their shape.
            request = self._client().chat.completions.with_streaming_response.create(
                model=self.model,
                messages=cast(list[ChatCompletionMessageParam], messages),
                tools=cast(list[ChatCompletionToolParam], specs) if specs else omit,
                stream=True,
                stream_options={"include_usage": True},
            )
            stats.request()
            async with request as response:
                async for delta in stream.deltas(response):
                    if delta.usage is not None:
                        usage = delta.usage
                    if delta.content:
                        stats.token()
                        text.append(delta.content)
                        deltas.add(delta.content)
                    for tc in delta.tool_calls:
                        stats.token()
                        slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                        if tc.id:
                            slot["id"] = tc.id
                        slot["name"] += tc.name or ""
                        slot["arguments"] += tc.arguments or ""
            finished = True
        finally:
            deltas.flush()
            tool_calls = [
                {"id": c["id"] or f"call_{uuid.uuid4().hex[:12]}", "name": c["name"], "arguments": c["arguments"]}
                for _, c in sorted(calls.items())
            ]
            if text or tool_calls:
                asked = [ToolCallSpec(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in tool_calls]
                asked = asked if finished else []
                ctx.emit(AssistantMessage(content="".join(text), tool_calls=asked, complete=finished))
            call = self._usage(messages, "".join(text), tool_calls, usage, time.monotonic() - began)
            stats.add(call)
            ctx.emit(call)
            if self.context is not None and not call.estimated:
                self.context.calibrate(ctx.session_id, messages, specs, call.prompt_tokens)
        if not text and not tool_calls:
            raise BadModelOutput("The model ended its answer without any text or tool call.")
        return "".join(text), tool_calls

    async def _summarise(self, transcript: str, emit: Emit) -> str:
        """The fast model's summary of the oldest turns (for the context budget); its cost is recorded."""
        began = time.monotonic()
        response = await self._client().chat.completions.create(
            model=self.fast_model,
            messages=[{"role": "system", "content": SUMMARY_INSTRUCTIONS}, {"role": "user", "content": transcript}],
        )
        text = (response.choices[0].message.content or "") if response.choices else ""
        usage = response.usage.model_dump() if response.usage is not None else None
        emit(self._usage([{"role": "user", "content": transcript}], text, [], usage, time.monotonic() - began,
                         self.fast_model))
        if not text.strip():
            raise BadModelOutput("the summary was empty")
        return text

    def _usage(self, messages: list[dict[str, Any]], text: str, calls: list[dict[str, str]],
               usage: dict[str, Any] | None, seconds: float, model: str | None = None) -> ModelCall:
        """The request's tokens as the server reported them; without a report, an estimate (marked)."""
        if usage is not None:
            details = usage.get("prompt_tokens_details") or {}
            prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
            cached = _count(details.get("cached_tokens") if isinstance(details, dict) else 0)
            estimated = False
        else:
            prompt = len(json.dumps(messages, ensure_ascii=False)) // CHARS_PER_TOKEN
            completion = (len(text) + sum(len(c["name"]) + len(c["arguments"]) for c in calls)) // CHARS_PER_TOKEN
            cached, estimated = 0, True
        model = model or self.model
        price = self.prices.get(model)
        return ModelCall(model=model, prompt_tokens=prompt, cached_tokens=min(cached, prompt),
                         completion_tokens=completion, estimated=estimated,
                         cost_usd=price.cost(prompt, min(cached, prompt), completion) if price else None,
                         duration_ms=seconds * 1000)


CHARS_PER_TOKEN = 4
"""For estimates when the server sends no usage (English text and code average about four)."""


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


class _Deltas:
    """Streamed text goes out as it arrives, but as at most one event per window: a fast model's
    many small chunks become a few events (each is a log write and a fan-out to every client)."""

    WINDOW = 0.05

    def __init__(self, ctx: ToolContext):
        self.ctx = ctx
        self.pending: list[str] = []
        self.last = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def add(self, text: str) -> None:
        self.pending.append(text)
        wait = self.last + self.WINDOW - time.monotonic()
        if wait <= 0:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            self.ctx.emit(TextDelta(text="".join(self.pending)))
            self.pending.clear()
            self.last = time.monotonic()
