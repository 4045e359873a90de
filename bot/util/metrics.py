"""The service's Prometheus metrics, in one place: every layer that records imports this module
(it sits in `bot.util`, below them all) and the web server renders `registry` at `GET /metrics`.

Each `Service` has its own `Metrics` (its own registry, not prometheus-client's global one), so
several services in one process (tests) do not collide. Labels stay bounded: outcomes, Slack
method names, sandbox start paths, session statuses; never a session, user or channel id.

Gauges that are cheaper to read than to keep current (sessions by status, queue depth, warm pool
size, WebSocket viewers) are read at scrape time: `refreshers` run before each scrape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
TURN_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """The metric objects of one service, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions = Gauge("hosted_agents_sessions", "Sessions in the database by status", ["status"], registry=r)
        self.queue_depth = Gauge("hosted_agents_queued_prompts", "Prompts waiting to run, across sessions", registry=r)
        self.turns = Counter("hosted_agents_turns", "Turns ended, by outcome", ["outcome"], registry=r)
        self.turn_seconds = Histogram("hosted_agents_turn_duration_seconds", "How long turns took, by outcome",
                                      ["outcome"], buckets=TURN_BUCKETS, registry=r)
        self.slack_calls = Counter("hosted_agents_slack_api_calls", "Slack Web API writes sent by the outbox",
                                   ["method", "outcome"], registry=r)
        self.slack_requests = Counter("hosted_agents_slack_http_requests",
                                      "HTTP requests to the Slack Web API (all clients, retries included)",
                                      ["family", "result"], registry=r)
        self.slack_retries = Counter("hosted_agents_slack_api_retries", "Slack writes retried (network, 5xx)",
                                     ["method"], registry=r)
        self.slack_rate_limited = Counter("hosted_agents_slack_api_rate_limited",
                                          "Slack writes answered with a rate limit (HTTP 429)", ["method"], registry=r)
        self.pool_size = Gauge("hosted_agents_warm_pool_size", "Warm containers ready to be claimed", registry=r)
        self.pool_claims = Counter("hosted_agents_warm_pool_claims",
                                   "Warm pool claims: `hit` found a container, `miss` found none", ["result"], registry=r)
        self.sandbox_starts = Counter("hosted_agents_sandbox_starts",
                                      "Session sandboxes made ready, by path (pool, snapshot, image, build)",
                                      ["source"], registry=r)
        self.loop_lag = Gauge("hosted_agents_event_loop_lag_seconds", "Latest event-loop lag (sleep overshoot)",
                              registry=r)
        self.loop_lag_seconds = Histogram("hosted_agents_event_loop_lag_distribution_seconds", "Event-loop lag (sleep overshoot)",
                                          buckets=LAG_BUCKETS, registry=r)
        self.model_tokens = Counter("hosted_agents_model_tokens", "Model tokens by kind (prompt, cached, completion)",
                                    ["kind"], registry=r)
        self.model_cost = Counter("hosted_agents_model_cost_usd", "Model cost in USD (models with a price)", registry=r)
        self.model_calls = Counter("hosted_agents_model_calls", "Model requests, by whether the server reported usage",
                                   ["usage"], registry=r)
        self.model_errors = Counter("hosted_agents_model_errors", "Turns the model ended with an error, by kind",
                                    ["kind"], registry=r)
        self.web_viewers = Gauge("hosted_agents_websocket_viewers", "Open WebSocket connections of session pages",
                                 registry=r)
        self.refreshers: list[Callable[[], Awaitable[None]]] = []
        """Run before each scrape: they set the gauges read at scrape time."""

    async def render(self) -> bytes:
        """The text exposition format, after the scrape-time gauges were read."""
        for refresh in self.refreshers:
            try:
                await refresh()
            except Exception:  # a failing source leaves its gauge at the last value; the rest is served
                log.exception("reading a metric failed")
        return generate_latest(self.registry)

    async def watch_loop_lag(self, interval: float = 0.5) -> None:
        """Until cancelled: sleep `interval`, record how much later than asked the loop woke us."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - start - interval)
            self.loop_lag.set(lag)
            self.loop_lag_seconds.observe(lag)

