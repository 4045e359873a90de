"""The OpenAI-compatible client and how its failures read to a person."""

from __future__ import annotations

import re

import openai
from openai import AsyncOpenAI

from bot.config import Settings


def make_client(settings: Settings) -> AsyncOpenAI:
    """One shared client: its connection pool is what keeps the first request fast."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
    return AsyncOpenAI(
        api_key=key,
        base_url=settings.openai_base_url,
        max_retries=settings.model_max_retries,
        # `read` bounds the silence between two streamed chunks, not the whole answer.
        timeout=openai.Timeout(settings.model_timeout, connect=min(10.0, settings.model_timeout)),
    )


class ModelNotConfigured(Exception):
    def __str__(self) -> str:
        return "No model is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)."


class StepLimitReached(Exception):
    def __init__(self, steps: int):
        self.steps = steps

    def __str__(self) -> str:
        return f"The agent used its {self.steps} model steps for this turn without finishing, so it was ended."


class BadModelOutput(Exception):
    """The model's answer broke the protocol (not a tool error, which goes back to the model)."""


def describe_error(exc: BaseException, timeout: float) -> str:
    """A one-line explanation for the thread; never a traceback, never a secret."""
    from sandbox.workspace import WorkspaceLost

    if isinstance(exc, ModelNotConfigured | BadModelOutput | WorkspaceLost):
        return str(exc)
    if isinstance(exc, openai.APITimeoutError):
        return f"The model did not answer for {timeout:g} s, so this turn was ended."
    if isinstance(exc, openai.APIConnectionError):
        return "The model service could not be reached."
    if isinstance(exc, openai.RateLimitError):
        return "The model service is rate limiting us (HTTP 429); try again in a minute."
    if isinstance(exc, openai.AuthenticationError):
        return "The model service refused our API key (HTTP 401); an operator should check OPENAI_API_KEY."
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("message") if isinstance(body.get("message"), str) else ""
        detail = _short(detail or re.sub(r"^Error code: \d+ - ", "", exc.message or ""))
        return f"The model service answered with an error (HTTP {exc.status_code}){': ' + detail if detail else ''}."
    if isinstance(exc, openai.APIError):
        return f"The model service sent something we could not read: {_short(str(exc))}."
    return "Something went wrong on our side while running this turn; it is in the service log."


def is_expected(exc: BaseException) -> bool:
    """Failures with a known cause are logged in one line; anything else with its traceback."""
    from sandbox.workspace import WorkspaceLost

    return isinstance(exc, openai.APIError | StepLimitReached | BadModelOutput | ModelNotConfigured | WorkspaceLost)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
