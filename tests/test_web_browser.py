"""The web view in a real browser: Debian's Chromium, headless, driven by Playwright, against
`hosted-agents serve` (a process of its own) talking to the Slack and OpenAI fakes.

Screenshots of the session page (desktop and phone size) are left in test-artifacts/."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.events import AssistantMessage, Author, Origin, Outcome, Status, TextDelta, TurnEnded, TurnStarted
from bot.service import Service
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply, ToolCall
from tests.fakes.slack import FakeSlack
from tests.slack_threads import all_done, turns

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
PHONE = {"width": 390, "height": 844}
WAIT_MS = 15_000

if not CHROMIUM.exists():
    message = "Chromium is not installed (scripts/ensure-chromium.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)

from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect  # noqa: E402

expect.set_options(timeout=WAIT_MS)


@dataclass
class Served:
    base: str
    process: asyncio.subprocess.Process
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve(data: Path, slack: FakeSlack, model: FakeOpenAI, **extra: Any) -> AsyncIterator[Served]:
    """`hosted-agents serve` on its own port, its links pointing at itself."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **service_env(data, slack, model, web_port=port, public_url=base, sandbox_backend="none", **extra)}
    log = data.parent / "serve.log"
    exe = Path(sys.executable).with_name("hosted-agents")
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(str(exe), "serve", env=env, stdout=out, stderr=out)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert process.returncode is None, log.read_text()
                await asyncio.sleep(0.05)
        await asyncio.wait_for(slack.connected.wait(), 10)
        yield Served(base, process, log)
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 15)


@pytest.fixture
async def served(tmp_path: Path, slack: FakeSlack, model: FakeOpenAI) -> AsyncIterator[Served]:
    async with serve(tmp_path / "data", slack, model) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        await b.close()


async def signed_in_page(browser: Browser, slack: FakeSlack, user: str, **context: Any) -> tuple[BrowserContext, Page]:
    """A browser of `user`, signed in through the App Home's *Open web view* button."""
    ctx = await browser.new_context(**context)
    page = await ctx.new_page()
    before = slack.home_views.get(user)
    await slack.open_home(user)
    await slack.wait_for(lambda: slack.home_views.get(user) not in (None, before), what="the App Home")
    await page.goto(slack.home_buttons(user)["open_web_view"]["url"])
    await expect(page).to_have_url(re.compile(r"/sessions$"))
    return ctx, page


async def mention_and_link(slack: FakeSlack, text: str, user: str = "U0ALICE1") -> tuple[str, str]:
    root = await slack.mention(user, text)
    head = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root), what="the turn's message"))[0]
    return root, head.buttons()["view_session"]["url"]


def answer_of(page: Page, turn: int = 0) -> Any:
    return page.locator("#turns .turn").nth(turn).locator(".answer")


async def test_the_thread_link_shows_the_answer_streaming_in_live(served, browser, slack, model):
    words = [f"w{i:03d}" for i in range(120)]
    model.add(Reply(text="## Plan\n\n" + " ".join(words), chunk_delay=0.03, chunk_chars=5))
    root, link = await mention_and_link(slack, "write a plan")
    page = await browser.new_page()
    await page.goto(link)
    await expect(page.locator("#conn")).to_have_text("live")
    answer = answer_of(page)
    await expect(answer).to_contain_text("w010")
    partial = await answer.inner_text()
    assert "w119" not in partial, "seen while it was still streaming"
    await expect(page.locator("#turns .turn .outcome")).to_contain_text("Done")
    await expect(answer.locator("h2")).to_have_text("Plan")  # finished Markdown is rendered
    assert re.findall(r"w\d{3}", await answer.inner_text()) == words
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "session-desktop.png"), full_page=True)
    await page.set_viewport_size(PHONE)
    await page.screenshot(path=str(ARTIFACTS / "session-phone.png"), full_page=True)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page fits a phone's width ({width} px)"
    await slack.wait_for(lambda: all_done(slack, root, 1))


async def test_sign_in_from_app_home_then_prompt_from_the_page(served, browser, slack, model):
    model.add(Reply(text="It is the nightly cleanup."))
    root, link = await mention_and_link(slack, "what is this cron job?")
    await slack.wait_for(lambda: all_done(slack, root, 1))
    ctx, page = await signed_in_page(browser, slack, "U0ALICE1")
    await page.goto(link)
    model.add(Reply(text="It runs at **3 am** UTC."))
    await page.get_by_label("Prompt").fill("when does it run?")
    await page.get_by_role("button", name="Send").click()
    second = page.locator("#turns .turn").nth(1)
    await expect(second.locator(".prompt")).to_have_text("when does it run?")
    await expect(second.locator(".who")).to_contain_text("Alice")
    await expect(second.locator(".answer strong")).to_have_text("3 am")
    await expect(page.get_by_label("Prompt")).to_have_value("")
    await slack.wait_for(lambda: all_done(slack, root, 2), what="the answer in the thread too")
    head = turns(slack, root)[1].head
    assert "<@U0ALICE1> asked (from the web): when does it run?" in str(head.blocks)
    assert "3 am" in turns(slack, root)[1].rendered()
    await ctx.close()


async def test_stop_a_running_turn_from_the_page(served, browser, slack, model):
    model.add(Reply(text="slow " * 3000, chunk_delay=0.02))
    root, link = await mention_and_link(slack, "a long job")
    ctx, page = await signed_in_page(browser, slack, "U0ALICE1")
    await page.goto(link)
    stop = page.get_by_role("button", name="Stop")
    await expect(stop).to_be_visible()
    await stop.click()
    await expect(page.locator("#turns .turn .outcome")).to_contain_text("Stopped by U0ALICE1")
    await expect(stop).to_be_hidden()
    await slack.wait_for(lambda: all_done(slack, root, 1))
    assert "Stopped" in turns(slack, root)[0].head.rendered()
    await ctx.close()


async def test_a_failed_turn_link_from_slack_lands_on_its_entry_live_and_after_a_reload(served, browser, slack, model):
    model.add(Reply(text="fine so far"), Reply(tool_calls=[ToolCall("post_note", {"text": "Plan: fail."})]),
              Reply(status=500, error="upstream exploded"))
    root, link = await mention_and_link(slack, "start")
    await slack.wait_for(lambda: all_done(slack, root, 1))
    page = await browser.new_page()
    await page.goto(link)
    await expect(page.locator("#conn")).to_have_text("live")
    await slack.user_message("U0ALICE1", "now fail", thread_ts=root)
    await slack.wait_for(lambda: all_done(slack, root, 2), what="the failed turn")
    found = re.search(r"<(http[^|>]+#(e\d+))\|See where in the trace>", str(turns(slack, root)[1].head.blocks))
    assert found is not None
    trace_link, anchor = found.group(1), found.group(2)
    failed = page.locator("#turns .turn").nth(1)
    await expect(failed.locator(f"#{anchor}")).to_contain_text("HTTP 500")  # the entry added live has the anchor
    await expect(failed.locator(".prompt")).to_have_attribute("id", re.compile(r"^e\d+$"))
    await expect(failed.locator(".tool")).to_have_attribute("id", re.compile(r"^e\d+$"))
    await expect(failed.locator(".notes li")).to_have_attribute("id", re.compile(r"^e\d+$"))
    live_ids = await page.eval_on_selector_all("#turns [id^=e]", "els => els.map(e => e.id)")
    await page.goto(trace_link)
    target = page.locator(":target")
    await expect(target).to_have_attribute("id", anchor)
    await expect(target).to_contain_text("The model service answered with an error (HTTP 500)")
    assert await target.evaluate("el => getComputedStyle(el).outlineStyle") == "solid", "highlighted"
    assert await page.eval_on_selector_all("#turns [id^=e]", "els => els.map(e => e.id)") == live_ids, \
        "the server renders the same anchors as the live page"
    await page.close()


async def seed_session(data: Path, slack: FakeSlack, model: FakeOpenAI, words: list[str]) -> str:
    """A session whose log already holds a turn of 5,000 events (written through the sessions layer
    before the service starts); returns its share token."""
    svc = Service(make_settings(service_env(data, slack, model, sandbox_backend="none")))
    await svc.start()
    try:
        alice = Author(id="U0ALICE1", name="Alice", origin=Origin.WEB)
        info = await svc.sessions.open(Origin.WEB, alice, None, title="a long history")
        prompt, _ = svc.sessions.log_of(info.id).enqueue("a long history", alice, time.time())
        svc.sessions.log_of(info.id).set_prompt_status(prompt.id, Outcome.DONE.value)
        turn = prompt.id
        svc.sessions.emit(info.id, TurnStarted(prompt_id=turn, text="a long history", author=alice), turn=turn)
        for word in words:
            svc.sessions.emit(info.id, TextDelta(text=word + " "), turn=turn)
        svc.sessions.emit(info.id, AssistantMessage(content=" ".join(words) + " "), turn=turn)
        svc.sessions.emit(info.id, TurnEnded(prompt_id=turn, outcome=Outcome.DONE), turn=turn)
        svc.sessions.emit(info.id, Status(state="idle"))
        await svc.sessions.persist_status(info.id)
        return info.share_token
    finally:
        await svc.stop()


async def test_reloading_mid_stream_and_on_a_5000_event_session_misses_and_doubles_nothing(tmp_path, browser, slack, model):
    history = [f"h{i:04d}" for i in range(4995)]  # with the turn around it: 5,000 events
    token = await seed_session(tmp_path / "data", slack, model, history)
    async with serve(tmp_path / "data", slack, model) as running:
        ctx, page = await signed_in_page(browser, slack, "U0ALICE1")
        started = time.monotonic()
        await page.goto(f"{running.base}/s/{token}")
        await expect(page.locator("#conn")).to_have_text("live")
        opened = time.monotonic() - started
        assert re.findall(r"h\d{4}", await answer_of(page).inner_text()) == history
        assert int(await page.locator("#session").get_attribute("data-last-seq") or 0) >= 5000
        words = [f"t{i:03d}" for i in range(300)]
        model.add(Reply(text=" ".join(words), chunk_delay=0.02, chunk_chars=5))
        await page.get_by_label("Prompt").fill("go on")
        await page.get_by_role("button", name="Send").click()
        answer = answer_of(page, 1)
        await expect(answer).to_contain_text("t050")
        await page.reload()  # mid-stream: the page renders what the log has, then tails from there
        await expect(answer).to_contain_text("t150")
        assert "t299" not in await answer.inner_text(), "the reload happened mid-stream"
        await page.reload()
        await expect(page.locator("#turns .turn").nth(1).locator(".outcome")).to_contain_text("Done")
        assert re.findall(r"t\d{3}", await answer.inner_text()) == words
        assert re.findall(r"h\d{4}", await answer_of(page).inner_text()) == history
        await ctx.close()
    print(f"\n5,000-event session page: live in {opened * 1000:.0f} ms")


async def test_two_browsers_see_each_other_in_presence(served, browser, slack, model):
    model.add(Reply(text="ok"))
    _, link = await mention_and_link(slack, "hello")
    ctx, alice = await signed_in_page(browser, slack, "U0ALICE1")
    await alice.goto(link)
    await expect(alice.locator("#presence")).to_have_text("Watching: Alice")
    stranger = await browser.new_page()
    await stranger.goto(link)
    await expect(stranger.locator("#presence")).to_have_text("Watching: Alice and 1 anonymous")
    await expect(alice.locator("#presence")).to_have_text("Watching: Alice and 1 anonymous")
    await stranger.close()
    await expect(alice.locator("#presence")).to_have_text("Watching: Alice")
    await ctx.close()


async def test_markup_from_people_and_the_model_runs_nothing(served, browser, slack, model):
    model.add(Reply(text="<script>window.pwned = 'answer'</script> <img src=x onerror=\"window.pwned='img'\"> done"))
    root, link = await mention_and_link(slack, "look")
    await slack.wait_for(lambda: all_done(slack, root, 1))
    ctx, page = await signed_in_page(browser, slack, "U0ALICE1")
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await page.goto(link)
    model.add(Reply(text="<script>window.pwned = 'live'</script> also done"))
    await page.get_by_label("Prompt").fill("<img src=x onerror=\"window.pwned='prompt'\"> <script>alert(1)</script>")
    await page.get_by_role("button", name="Send").click()
    second = page.locator("#turns .turn").nth(1)
    await expect(second.locator(".outcome")).to_contain_text("Done")
    await expect(second.locator(".prompt")).to_contain_text("<img src=x onerror=")
    await expect(page.locator("#turns .turn").nth(0).locator(".answer")).to_contain_text("<script>window.pwned")
    await expect(second.locator(".answer")).to_contain_text("<script>window.pwned = 'live'</script>")
    await page.reload()
    await expect(page.locator("#conn")).to_have_text("live")
    assert await page.evaluate("window.pwned") is None
    assert await page.locator("#turns img, #turns script").count() == 0
    assert dialogs == []
    await ctx.close()


async def test_wrong_links_are_404_and_anonymous_viewers_cannot_prompt(served, browser, slack, model):
    model.add(Reply(text="ok"))
    root, link = await mention_and_link(slack, "hello")
    await slack.wait_for(lambda: all_done(slack, root, 1))
    page = await browser.new_page()
    for bad in (f"{served.base}/s/", f"{served.base}/s/{'A' * 32}", link[:-1] + ("A" if link[-1] != "A" else "B")):
        response = await page.goto(bad)
        assert response is not None and response.status == 404, bad
    await page.goto(link)
    await expect(page.locator("#conn")).to_have_text("live")
    assert await page.get_by_label("Prompt").count() == 0
    await expect(page.get_by_text("to prompt this session")).to_be_visible()
    calls = len(model.requests)
    token = link.rsplit("/", 1)[1]
    status = await page.evaluate("""async (token) => (await fetch('/s/' + token + '/prompt', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify({text: 'sneaky'})})).status""", token)
    assert status == 401
    await asyncio.sleep(0.2)
    assert len(model.requests) == calls


async def test_a_parent_page_lists_its_sub_sessions_live_and_they_link_back(tmp_path, browser, slack, model):
    repos = Path(__file__).parent / "data" / "acme_repos.yml"
    model.add_for("survey", Reply(tool_calls=[
        ToolCall("spawn_session", {"repo": "acme/api", "prompt": "look at the API", "title": "API <b>look</b>"}),
        ToolCall("spawn_session", {"repo": "acme/web", "prompt": "look at the web app", "title": "Web look"})]),
        Reply(text="started both", ttft=0.5))
    model.add_for("look at the", Reply(text="looked " * 20, chunk_delay=0.1, chunk_chars=7),
                  Reply(text="looked " * 20, chunk_delay=0.1, chunk_chars=7))
    async with serve(tmp_path / "data", slack, model, repos_config=repos) as running:
        root = await slack.mention("U0ALICE1", "in acme/api survey both")
        head = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root), what="the turn's message"))[0]
        page = await browser.new_page()
        await page.goto(head.buttons()["view_session"]["url"].replace("http://agents.test", running.base))
        children = page.locator("#children li")
        await expect(children).to_have_count(2)
        await expect(children.nth(0).locator(".title")).to_have_text("API <b>look</b>")
        await expect(children.nth(0).locator(".repo")).to_have_text("acme/api")
        await expect(children.nth(1).locator(".status")).to_have_text("working")
        await expect(children.nth(0).locator(".status")).to_have_text("done")
        await expect(children.nth(1).locator(".status")).to_have_text("done")
        await page.reload()  # rendered by the server the same way
        await expect(children.nth(1).locator(".status")).to_have_text("done")
        await expect(children.nth(0).locator(".title b")).to_have_count(0)
        await children.nth(0).locator(".title").click()
        await expect(page.locator("h1")).to_have_text("API <b>look</b>")
        await expect(page.locator("#parent")).to_contain_text("Sub-session of in acme/api survey both")
        await page.locator("#parent a").click()
        await expect(page.locator("#children li")).to_have_count(2)
        await page.close()


async def test_the_stats_page_plots_and_counts_humans_prompting_live(served, browser, slack, model):
    ctx, page = await signed_in_page(browser, slack, "U0ALICE1")
    await page.goto(f"{served.base}/stats")
    await expect(page.locator("svg.chart")).to_be_visible()
    await expect(page.locator("#humans")).to_have_text("0")
    model.add(Reply(text="one"), Reply(text="two"))
    await slack.mention("U0ALICE1", "first")
    await slack.mention("U0BOB001", "second")
    await expect(page.locator("#humans")).to_have_text("2")  # no reload: the page polls
    await page.reload()  # the plot is drawn by the server: today's bar now has the two sessions
    await expect(page.locator("svg.chart rect.bar-sessions").last).to_have_attribute("height", re.compile(r"^[1-9]"))
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "stats-desktop.png"), full_page=True)
    await ctx.close()
