"""The OpenAI-compatible client and how its failures read to a person."""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping

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


class ModelStalled(Exception):
    """The model's stream went silent for longer than MODEL_TIMEOUT (the loop asks once more
    when nothing had arrived yet; this is raised when that did not help, or could not)."""

    def __init__(self, asked: int, partial: bool):
        self.asked, self.partial = asked, partial

    def describe(self, timeout: float) -> str:
        if self.partial:
            return (f"The model stopped in the middle of its answer (nothing for {timeout:g} s), so this turn was "
                    "ended; what it wrote is kept.")
        times = {1: "", 2: " (asked twice)"}.get(self.asked, f" (asked {self.asked} times)")
        return f"The model did not answer for {timeout:g} s{times}, so this turn was ended."

    def __str__(self) -> str:
        return "the model's stream stalled" + (" mid-answer" if self.partial else f" ({self.asked} attempts)")


def describe_error(exc: BaseException, timeout: float, now: float | None = None) -> str:
    """A one-line explanation for the thread; never a traceback, never a secret."""
    return _short(_describe(exc, timeout, time.time() if now is None else now), 400)


def _describe(exc: BaseException, timeout: float, now: float) -> str:
    from sandbox.workspace import WorkspaceLost

    if isinstance(exc, ModelNotConfigured | BadModelOutput | WorkspaceLost | StepLimitReached):
        return str(exc)
    if isinstance(exc, ModelStalled):
        return exc.describe(timeout)
    if isinstance(exc, openai.APITimeoutError):
        return f"The model did not answer for {timeout:g} s, so this turn was ended."
    if isinstance(exc, openai.APIConnectionError):
        return "The model service could not be reached."
    if isinstance(exc, openai.RateLimitError):
        body = exc.body if isinstance(exc.body, dict) else {}
        if body.get("code") == "insufficient_quota" or body.get("type") == "insufficient_quota":
            return ("The model provider says our quota is used up (HTTP 429); an operator should check the plan "
                    "and billing.")
        wait = retry_after(exc.response.headers)
        return f"The model provider is rate limiting us (HTTP 429{_attempts(exc)}); {_try_again(wait, now)}."
    if isinstance(exc, openai.AuthenticationError):
        return "The model service refused our API key (HTTP 401); an operator should check OPENAI_API_KEY."
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("message") if isinstance(body.get("message"), str) else ""
        detail = _short(detail or re.sub(r"^Error code: \d+ - ", "", exc.message or ""))
        tried = _attempts(exc)
        return f"The model service answered with an error (HTTP {exc.status_code}{tried}){': ' + detail if detail else ''}."
    if isinstance(exc, openai.APIError):
        return f"The model service sent something we could not read: {_short(str(exc))}."
    return "Something went wrong on our side while running this turn; it is in the service log."


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After` in seconds or as a date),
    read as the openai client reads them; None when it did not say."""
    for name, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo is not None else None


def _try_again(wait: float | None, now: float) -> str:
    if wait is None:
        return "try again in a minute"
    at = time.strftime("%H:%M UTC", time.gmtime(now + wait))
    if wait < 90:
        return f"try again in {max(1, math.ceil(wait))} s"
    if wait < 90 * 60:
        return f"try again in {math.ceil(wait / 60)} minutes (after {at})"
    return f"try again in {wait / 3600:.1f} hours (after {at})"


def _attempts(exc: openai.APIStatusError) -> str:
    """`, 3 attempts` when the client had retried the request (it says so in a header it sends)."""
    try:
        taken = int(exc.response.request.headers.get("x-stainless-retry-count", "0"))
    except (ValueError, RuntimeError):
        return ""
    return f", {taken + 1} attempts" if taken > 0 else ""


def is_expected(exc: BaseException) -> bool:
    """Failures with a known cause are logged in one line; anything else with its traceback."""
    from sandbox.workspace import WorkspaceLost

    return isinstance(exc, openai.APIError | StepLimitReached | BadModelOutput | ModelNotConfigured | WorkspaceLost
                      | ModelStalled)


_SECRET = re.compile(r"\b(sk|xox[abpr]|xapp|gh[pousr]|github_pat)[-_][A-Za-z0-9_\-]{6,}")


def _short(text: str, limit: int = 300) -> str:
    """One line, at most `limit` characters, with anything shaped like a key or token masked."""
    text = _SECRET.sub(lambda m: m.group(1) + "-…", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"
