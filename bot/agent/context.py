"""The context budget: the model's view of a long session kept under its context window.

Before each model call the request is measured. Past the budget (CONTEXT_BUDGET of the window)
it is compacted down to a lower target, so compaction is rare and the prompt's prefix stays the
same between calls (which is what servers cache): first the oldest tool results become stubs (what
ran, how long the output was, where the full output is), then, if that is not enough, the oldest
turns are summarised by the fast model into one message that keeps every prompt and its author.
Each compaction is an event and the view is rebuilt from the log (conversation.py), so it is the
same after a restart. The log itself keeps everything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from bot.agent.conversation import OVERHEARD, Conversation, build, shrink_arguments, stub
from bot.events import ContextCompacted, Event, EventData

log = logging.getLogger(__name__)

Summarise = Callable[[str, Callable[[EventData], Event]], Awaitable[str]]
"""Writes a summary of a transcript (the fast model), recording its model call; raises when it cannot."""
History = Callable[[], list[Event]]
"""The session's history events (conversation.HISTORY_KINDS), read from its log."""

TARGET = 0.75
"""Compaction goes down to this share of the budget, so that it is not needed again at the next call."""
SUMMARY_AIM = 0.5
"""When turns have to be summarised, enough of them to bring the request to this share of the target."""
SUMMARY_ALLOWANCE = 1500
"""Tokens kept free for the summary the fast model writes."""
TRANSCRIPT_RESULT_CHARS = 600
"""Of each tool result, what the summariser is shown."""
SUMMARY_INSTRUCTIONS = """\
You compact the start of a coding agent's working session so the agent can go on without it.
Write a factual summary, at most 400 words, of what was asked, what was done (files changed,
commands run and their outcome), what was found, decisions made and anything left open.
Keep file paths, names, numbers and error messages exact. Do not address anyone; no preamble."""


class TokenCounter:
    """Tokens of text for one model: tiktoken's encoding when the model is known and its encoding can
    be loaded, otherwise a deliberately high estimate (UTF-8 bytes / 3) so budgets err on the safe side."""

    def __init__(self, model: str):
        self.model = model
        self._encode: Callable[[str], list[int]] | None = None
        self._cache: LRUCache[str, int] = LRUCache(maxsize=8192)

    def load(self) -> None:
        """Loads the encoding (reads or downloads its file: call it off the event loop, once)."""
        try:
            import tiktoken

            encoding = tiktoken.encoding_for_model(self.model)
        except KeyError:
            log.info("tiktoken does not know %s: its tokens are estimated", self.model)
            return
        except Exception as exc:  # offline: the encoding's file could not be fetched
            log.warning("tiktoken could not load the encoding of %s (%s); tokens are estimated. Offline, put the "
                        "encoding file in TIKTOKEN_CACHE_DIR.", self.model, type(exc).__name__)
            return
        self._cache.clear()
        self._encode = lambda text: encoding.encode(text, disallowed_special=())

    @property
    def exact(self) -> bool:
        return self._encode is not None

    def text(self, text: str) -> int:
        if not text:
            return 0
        count = self._cache.get(text)
        if count is None:
            count = len(self._encode(text)) if self._encode else len(text.encode("utf-8")) // 3 + 1
            self._cache[text] = count
        return count

    def messages(self, messages: list[dict[str, Any]]) -> int:
        total = 3
        for message in messages:
            total += 4 + self.text(message.get("content") or "")
            for call in message.get("tool_calls") or ():
                total += 8 + self.text(call["function"]["name"]) + self.text(call["function"]["arguments"])
        return total


@dataclass(frozen=True)
class Budget:
    window: int
    share: float

    @property
    def limit(self) -> int:
        return int(self.window * self.share)

    @property
    def target(self) -> int:
        return int(self.limit * TARGET)


class ContextBudget:
    def __init__(self, budget: Budget, counter: TokenCounter, summarise: Summarise, summary_window: int):
        self.budget = budget
        self.counter = counter
        self.summarise = summarise
        self.summary_window = summary_window
        self._scale: LRUCache[str, float] = LRUCache(maxsize=1024)

    def measure(self, session_id: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
        """The request's tokens, scaled by how far the server's own count was from ours last time."""
        counted = self.counter.messages(messages) + (self.counter.text(json.dumps(tools)) if tools else 0)
        return int(counted * self._scale.get(session_id, 1.0))

    def calibrate(self, session_id: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                  reported: int) -> None:
        """The server counted `reported` prompt tokens for this request: later measures use the ratio."""
        ours = self.counter.messages(messages) + (self.counter.text(json.dumps(tools)) if tools else 0)
        if ours > 0 and reported > 0:
            self._scale[session_id] = min(max(reported / ours, 0.75), 4.0)

    async def fit(self, session_id: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                  history: History, emit: Callable[[EventData], Event]) -> list[dict[str, Any]]:
        """The messages to send: as they are when under the budget, otherwise compacted (and recorded)."""
        before = self.measure(session_id, messages, tools)
        if before <= self.budget.limit:
            return messages
        try:
            return await self._compact(session_id, messages, tools, history, emit, before)
        except Exception:  # never the reason a turn fails: the server says so if it is really too long
            log.exception("compacting the context of session %s failed", session_id)
            return messages

    async def _compact(self, session_id: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                       history: History, emit: Callable[[EventData], Event], before: int) -> list[dict[str, Any]]:
        system = messages[0]["content"]
        conv = build(history(), system)
        target = self.budget.target
        overhead = self.measure(session_id, [], tools)
        sizes = [self.measure(session_id, [m], []) for m in conv.messages]
        total = sum(sizes) + overhead
        last_step = max((i for i, m in enumerate(conv.messages) if m["role"] == "assistant"), default=-1)
        stubbed: list[str] = []
        for index, call_id, asked in conv.results:  # oldest first; the latest step's results stay
            if total <= target or asked >= last_step:
                break
            shown = self.measure(session_id, [_stubbed(conv, index, asked)], [])
            total -= sizes[index] - shown
            sizes[index] = shown
            stubbed.append(call_id)
            asking = self.measure(session_id, [_shrunk(conv.messages[asked], set(stubbed))], [])
            total -= sizes[asked] - asking  # the call's own long arguments go too
            sizes[asked] = asking
        turns, summary = 0, ""
        if total > target and len(conv.turns) > 1:  # aim lower: a summary is a model call and a new prefix
            turns, cut = self._turns_to_summarise(conv, sizes, total, int(target * SUMMARY_AIM))
            summary = await self._summary(conv.messages[1:cut], emit)
        if stubbed or turns:
            emit(ContextCompacted(stubbed=stubbed, turns=turns, summary=summary, tokens_before=before,
                                  window=self.budget.window))
            compacted = build(history(), system).messages
        else:
            compacted = messages
        after = self.measure(session_id, compacted, tools)
        if after > self.budget.limit:  # one turn alone is over the budget: cut it, in this request only
            compacted = _trimmed(compacted, lambda m: self.measure(session_id, m, tools), self.budget.limit)
            after = self.measure(session_id, compacted, tools)
        log.info("session %s: context compacted (%d results stubbed, %d turns summarised) from %d to %d tokens",
                 session_id, len(stubbed), turns, before, after)
        return compacted

    def _turns_to_summarise(self, conv: Conversation, sizes: list[int], total: int, target: int) -> tuple[int, int]:
        """The fewest oldest turns whose summary brings the request under the target (never the current
        turn): their number, and the index of the first message kept."""
        start = 1  # after the system prompt; a previous summary is summarised again with them
        chosen = conv.turns[0][0] - 1, start
        for (_, _), (next_turn, next_index) in zip(conv.turns, conv.turns[1:], strict=False):
            overheard = (conv.messages[next_index - 1].get("content") or "").startswith(OVERHEARD)
            cut = next_index - 1 if overheard else next_index
            chosen = next_turn - 1, cut
            if total - sum(sizes[start:cut]) + SUMMARY_ALLOWANCE + _prompts_size(conv, sizes, cut) <= target:
                break
        return chosen

    async def _summary(self, messages: list[dict[str, Any]], emit: Callable[[EventData], Event]) -> str:
        limit = int(self.summary_window * 0.5) * 3  # characters, at the estimate's three per token
        transcript = _transcript(messages)
        if len(transcript) > limit:
            transcript = transcript[: limit // 3] + "\n[…]\n" + transcript[-(limit * 2 // 3):]
        try:
            return (await self.summarise(transcript, emit)).strip()
        except Exception as exc:
            log.warning("the fast model could not summarise (%s); the summary keeps the requests only", exc)
            return "(The summary could not be written; the requests above are what was asked.)"


def _stubbed(conv: Conversation, index: int, asked: int) -> dict[str, Any]:
    message = conv.messages[index]
    call = next(c for c in conv.messages[asked]["tool_calls"] if c["id"] == message["tool_call_id"])
    return {**message, "content": stub(call["function"]["name"], call["function"]["arguments"], message["content"])}


def _shrunk(message: dict[str, Any], stubbed: set[str]) -> dict[str, Any]:
    """An assistant message with the arguments of its compacted calls shrunk (as `build` will)."""
    calls = [{**c, "function": {**c["function"], "arguments": shrink_arguments(c["function"]["arguments"])}}
             if c["id"] in stubbed else c for c in message.get("tool_calls", [])]
    return {**message, "tool_calls": calls}


def _prompts_size(conv: Conversation, sizes: list[int], cut: int) -> int:
    """The prompts the summary keeps word for word, of the turns before `cut`."""
    return sum(sizes[index] for _, index in conv.turns if index < cut)


def _transcript(messages: list[dict[str, Any]]) -> str:
    parts = []
    for message in messages:
        content = message.get("content") or ""
        if message["role"] == "tool":
            content = content[:TRANSCRIPT_RESULT_CHARS] + ("…" if len(content) > TRANSCRIPT_RESULT_CHARS else "")
            parts.append(f"[tool result]\n{content}")
        elif message["role"] == "assistant":
            calls = "".join(f"\n-> {c['function']['name']}({c['function']['arguments'][:300]})"
                            for c in message.get("tool_calls") or ())
            parts.append(f"[agent]\n{content}{calls}")
        else:
            parts.append(f"[{message['role']}]\n{content}")
    return "\n\n".join(parts)


def _trimmed(messages: list[dict[str, Any]], measure: Callable[[list[dict[str, Any]]], int],
             limit: int) -> list[dict[str, Any]]:
    """The longest contents halved (marked) until the request fits: the last resort for one huge turn."""
    trimmed = [dict(m) for m in messages]
    for _ in range(64):
        if measure(trimmed) <= limit:
            break
        longest = max(range(1, len(trimmed)), key=lambda i: len(trimmed[i].get("content") or ""))
        content = trimmed[longest].get("content") or ""
        if len(content) < 200:
            break
        keep = len(content) // 4
        trimmed[longest]["content"] = (f"{content[:keep]}\n[… {len(content) - 2 * keep:,} characters left out to fit "
                                       f"the context window …]\n{content[-keep:]}")
    return trimmed
