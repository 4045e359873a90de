"""The fast model's vote, as structured output constrained to the configured repos + `unknown`.

The prompt is cache-friendly: the catalog (the same for every request) comes first, the request
last. Any failure (timeout, error, an answer outside the schema) returns None: the caller asks
the person instead of guessing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openai import AsyncOpenAI

from bot.repos import RepoCatalog

log = logging.getLogger(__name__)

UNKNOWN = "unknown"


@dataclass(frozen=True)
class ModelVote:
    repo: str | None
    confidence: float
    alternatives: tuple[str, ...]
    reason: str


def catalog_prompt(catalog: RepoCatalog) -> str:
    lines = [
        "You route engineering requests from Slack to the one code repository they are about.",
        "Answer with the repository's exact name, or \"unknown\" when the request does not say enough.",
        "Confidence is your probability of being right (0 to 1). Alternatives: up to three other likely repos.",
        "",
        "Repositories:",
    ]
    for repo in catalog.repos:
        lines.append(f"- {repo.name}: {repo.description or '(no description)'}")
        if repo.aliases:
            lines.append(f"  also called: {', '.join(repo.aliases)}")
        if repo.keywords:
            lines.append(f"  topics: {', '.join(repo.keywords)}")
        if repo.channels:
            lines.append(f"  channels: {', '.join('#' + c for c in repo.channels)}")
        for example in repo.examples[:5]:
            lines.append(f"  example request: {example}")
    return "\n".join(lines)


def schema(catalog: RepoCatalog) -> dict[str, Any]:
    names = [r.name for r in catalog.repos]
    return {
        "type": "object",
        "properties": {
            "repo": {"type": "string", "enum": [*names, UNKNOWN]},
            "confidence": {"type": "number"},
            "alternatives": {"type": "array", "items": {"type": "string", "enum": names}},
            "reason": {"type": "string"},
        },
        "required": ["repo", "confidence", "alternatives", "reason"],
        "additionalProperties": False,
    }


class ModelClassifier:
    def __init__(self, client: Callable[[], AsyncOpenAI], model: str, catalog: RepoCatalog, timeout: float):
        """`client` hands out the shared model client when asked (it raises when none is configured)."""
        self._client = client
        self.model = model
        self.catalog = catalog
        self.timeout = timeout
        self._system = catalog_prompt(catalog)
        self._schema = schema(catalog)
        self._names = {r.name for r in catalog.repos}

    async def vote(self, message: str, thread: list[str], channel: str | None, topic: str | None) -> ModelVote | None:
        context = []
        if channel:
            context.append(f"Channel: #{channel}" + (f" (topic: {topic})" if topic else ""))
        if thread:
            context.append("Earlier in the thread:\n" + "\n".join(f"> {t[:500]}" for t in thread[-8:]))
        context.append(f"Request: {message[:4000]}")
        try:
            client = self._client()
            response = await asyncio.wait_for(
                client.chat.completions.create(
                    model=self.model,
                    messages=[
                        {"role": "system", "content": self._system},
                        {"role": "user", "content": "\n\n".join(context)},
                    ],
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "repository", "strict": True, "schema": self._schema},
                    },
                ),
                self.timeout,
            )
            return self._parse(response.choices[0].message.content or "")
        except TimeoutError:
            log.info("the classifier model did not answer within %.1f s; asking instead", self.timeout)
        except Exception as exc:
            log.info("the classifier model failed (%s); asking instead", type(exc).__name__)
        return None

    def _parse(self, content: str) -> ModelVote | None:
        try:
            data = json.loads(content)
            repo, confidence = data["repo"], float(data["confidence"])
            alternatives = tuple(a for a in data.get("alternatives", []) if a in self._names and a != repo)[:3]
            reason = str(data.get("reason", ""))[:300]
        except (ValueError, KeyError, TypeError):
            log.info("the classifier model's answer was not the requested JSON; asking instead")
            return None
        if repo != UNKNOWN and repo not in self._names:
            return None
        if not 0.0 <= confidence <= 1.0:
            return None
        return ModelVote(None if repo == UNKNOWN else repo, confidence, alternatives, reason)
