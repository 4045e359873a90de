"""/metrics, /healthz and /readyz on the real service, through the fakes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from bot.service import Service
from bot.web.server import run_checks
from sandbox.docker import ping_engine
from tests.conftest import PG_ADMIN_URL, make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack
from tests.slack_threads import all_done


def base(service: Service) -> str:
    return f"http://127.0.0.1:{service.web_port}"


async def get(service: Service, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(base(service) + path) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def scrape(service: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await get(service, "/metrics")
    assert status == 200
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, labels[k]) in ls for k in labels))


async def test_metrics_parse_and_move_when_a_session_runs(service: Service, slack: FakeSlack, model: FakeOpenAI):
    before = await scrape(service)
    assert total(before, "hosted_agents_turns_total") == 0
    assert ("hosted_agents_queued_prompts", ()) in before
    assert ("hosted_agents_websocket_viewers", ()) in before
    assert ("hosted_agents_event_loop_lag_seconds", ()) in before

    model.add(Reply(text="All good.", chunk_delay=0.05))
    slack.rate_limit["chat.postMessage"] = 1  # the first post gets a 429: the outbox pauses and sends it again
    ts = await slack.mention("U0ALICE1", "is the build green?")
    await slack.wait_for(lambda: all_done(slack, ts, 1), what="the turn to finish")

    async def turn_counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        for _ in range(50):
            samples = await scrape(service)
            if total(samples, "hosted_agents_turns_total", outcome="done") == 1:
                return samples
            await asyncio.sleep(0.1)
        raise AssertionError("the turn was not counted")

    after = await turn_counted()
    assert total(after, "hosted_agents_turn_duration_seconds_count", outcome="done") == 1
    assert total(before, "hosted_agents_slack_api_calls_total") == 0
    assert total(after, "hosted_agents_slack_api_rate_limited_total", method="chat.postMessage") == 1
    assert total(after, "hosted_agents_slack_api_calls_total", method="chat.postMessage", outcome="rate_limited") == 1
    # every request on the shared HTTP session, by method family: the 429 and the ones that went through
    assert total(after, "hosted_agents_slack_http_requests_total", family="chat", result="429") == 1
    assert total(after, "hosted_agents_slack_http_requests_total", family="chat", result="2xx") >= 1
    assert total(after, "hosted_agents_slack_http_requests_total", family="auth", result="2xx") >= 1
    assert total(after, "hosted_agents_slack_api_calls_total", method="chat.postMessage") >= 1
    assert total(after, "hosted_agents_sessions", status="idle") + total(after, "hosted_agents_sessions",
                                                                          status="working") == 1
    assert not any("session" in k for _, ls in after for k, _v in ls if k != "status"), "no session ids as labels"
    assert total(after, "hosted_agents_model_calls_total", usage="estimated") == 1  # the fake sent no usage here
    assert total(after, "hosted_agents_model_tokens_total", kind="completion") == len("All good.") // 4


async def test_metrics_registries_are_per_service(tmp_path, slack: FakeSlack, model: FakeOpenAI):
    """Two services in one process each have their own registry (no duplicate-timeseries error)."""
    first = Service(make_settings(service_env(tmp_path / "a", slack, model)))
    second = Service(make_settings(service_env(tmp_path / "b", slack, model)))
    first.metrics.turns.labels("done").inc()
    assert first.metrics.registry is not second.metrics.registry
    assert second.metrics.registry.get_sample_value("hosted_agents_turns_total", {"outcome": "done"}) is None


async def test_healthz_and_readyz_when_all_is_well(service: Service):
    assert await get(service, "/healthz") == (200, {"ok": True, "slack": "on"})
    status, body = await get(service, "/readyz")
    assert status == 200, body
    assert body == {"ok": True, "failing": {}, "checks": {"database": "ok", "slack": "ok"}}


async def test_readyz_names_slack_when_its_socket_is_closed(service: Service, slack: FakeSlack):
    await slack.stop()
    for _ in range(100):
        status, body = await get(service, "/readyz")
        if status == 503:
            break
        await asyncio.sleep(0.1)
    assert status == 503, body
    assert list(body["failing"]) == ["slack"] and body["checks"]["database"] == "ok"
    assert body["ok"] is False
    assert (await get(service, "/healthz"))[0] == 200, "the process is still up"


async def test_readyz_names_the_database_when_it_is_gone(tmp_path, pg_url: str, slack: FakeSlack, model: FakeOpenAI):
    env = service_env(tmp_path / "data", slack, model, database_url=pg_url)
    svc = Service(make_settings(env))
    await svc.start()
    try:
        assert (await get(svc, "/readyz"))[0] == 200
        name = pg_url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # ends the service's connections too
        finally:
            await admin.close()
        status, body = await get(svc, "/readyz")
        assert status == 503, body
        assert list(body["failing"]) == ["database"]
        assert body["checks"]["slack"] == "ok"
        # a scrape still answers: the sessions gauge keeps its last value
        status, text = await get(svc, "/metrics")
        assert status == 200 and "hosted_agents_turns" in text
    finally:
        await svc.stop()


async def test_docker_check_fails_for_an_engine_that_is_not_there(tmp_path):
    """What `/readyz` runs for Docker (the engine's ping, off the event loop), at a socket nobody serves."""
    bad = f"unix://{tmp_path}/no-docker.sock"

    async def docker() -> str | None:
        await asyncio.to_thread(ping_engine, bad, 1)
        return None

    async def database() -> str | None:
        return None

    failing, checks = await run_checks({"database": database, "docker": docker})
    assert list(failing) == ["docker"] and checks["database"] == "ok"
    assert failing["docker"]
