"""The classifier's rules, its model step through the OpenAI fake, and the labelled set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bot.agent.model import make_client
from bot.config import load_settings
from bot.repos import load_repos
from classifier.classify import Classifier, RequestContext
from classifier.model import ModelClassifier
from tests.fakes.openai import FakeOpenAI, Reply

DATA = Path(__file__).parent / "data"
CATALOG = load_repos(DATA / "acme_repos.yml", "https://github.com/{repo}.git")
RULES = Classifier(CATALOG, None)


def decide(text: str, channel: str | None = "general", thread: list[str] | None = None, thread_repo: str | None = None):  # type: ignore[no-untyped-def]
    return RULES.decide_by_rules(RequestContext(text, thread or [], channel, thread_repo=thread_repo))


@pytest.mark.parametrize(
    ("text", "channel", "repo", "source"),
    [
        ("in acme/web make the table sortable, the api is fine", "eng-api", "acme/web", "override"),
        ("repo=acme/infra bump memory", "general", "acme/infra", "override"),
        ("see acme/search for the mapping", "general", "acme/search", "explicit"),
        ("<https://github.com/acme/auth/pull/3|PR 3> broke login", "general", "acme/auth", "explicit"),
        ("https://github.com/acme/docs/blob/main/x.md is stale", "general", "acme/docs", "explicit"),
        ("the Backend returns 502", "general", "acme/api", "alias"),
        ("BigQuery export is late", "general", "acme/data-pipeline", "keyword"),
        ("the login page is slow", "general", "acme/web", "keyword"),
        ("the exports are slow", "eng-api", "acme/api", "channel"),
        ("the exports are slow", "#eng-api", "acme/api", "channel"),
    ],
)
def test_each_rule_decides_when_it_is_sure(text, channel, repo, source):
    result = decide(text, channel)
    assert (result.repo, result.source) == (repo, source)


def test_whole_words_only_and_unknown_repos_are_ignored():
    assert decide("the apiary team wants a webhook", "general") is None  # 'api' inside a word
    assert decide("see acme/unknown and foo/bar", "general") is None
    assert decide("ssologin is a variable name", "general") is None


def test_two_repos_named_is_not_certainty():
    assert decide("acme/api and acme/web both log too much") is None
    assert decide("the dashboard shows invoices twice") is None  # web and api words
    assert decide("the refund api is down") is not None  # alias 'api' and keyword 'refund': one repo


def test_a_keyword_against_another_repos_channel_is_not_certainty_but_an_alias_is():
    assert decide("deep links to invoices open the home screen", "eng-mobile") is None
    assert decide("the backend is slow", "eng-mobile").repo == "acme/api"


def test_thread_binding_and_earlier_messages():
    assert decide("fix it", "general", thread_repo="acme/infra").source == "thread"
    result = decide("take a look?", "general", thread=["500s from acme/api since 10:00", "yes"])
    assert (result.repo, result.source) == ("acme/api", "thread-message")
    assert decide("take a look?", "general", thread=["the login page is slow"]) is None, "keywords in chatter decide nothing"


def test_a_catalog_of_one_decides_at_once():
    one = load_repos(DATA / "acme_repos.yml", "https://git.example.com/{repo}.git")
    one.repos = one.repos[:1]
    assert Classifier(one, None).decide_by_rules(RequestContext("anything")).source == "only-repo"


def test_on_the_labelled_set_the_rules_are_never_confidently_wrong():
    requests = yaml.safe_load((DATA / "requests.yml").read_text())["requests"]
    assert len(requests) >= 150 and len(CATALOG) >= 8
    decided = wrong = 0
    for r in requests:
        result = RULES.decide_by_rules(RequestContext(r["text"], r.get("thread", []), r["channel"]))
        if result is not None:
            decided += 1
            wrong += result.repo != r["repo"]
    assert wrong == 0
    assert decided >= 0.6 * len(requests), "the rules should decide most requests"


# --- the model step, through the OpenAI fake -------------------------------------------------


@pytest.fixture
async def model_classifier(model: FakeOpenAI):  # type: ignore[no-untyped-def]
    settings = load_settings(_env_file=None, openai_base_url=model.base_url, openai_api_key="sk-test", model_max_retries=0)
    client = make_client(settings)
    yield Classifier(CATALOG, ModelClassifier(lambda: client, "fast", CATALOG, timeout=0.5), min_confidence=0.6)
    await client.close()


def vote(repo: str, confidence: float, alternatives: list[str] | None = None) -> Reply:
    return Reply(text=json.dumps({"repo": repo, "confidence": confidence, "alternatives": alternatives or [], "reason": "r"}))


VAGUE = RequestContext("the sidebar collapses when you resize the window", ["it started yesterday"], "general", "Company-wide")


async def test_a_confident_model_answer_decides(model_classifier, model):
    model.add(vote("acme/web", 0.9, ["acme/mobile"]))
    result = await model_classifier.classify(VAGUE)
    assert (result.repo, result.source, result.alternatives) == ("acme/web", "model", ("acme/mobile",))
    body = model.requests[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["repo"]["enum"][-1] == "unknown"
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert system.startswith("You route engineering requests") and "acme/search" in system, "catalog first"
    assert user.endswith("Request: the sidebar collapses when you resize the window"), "request last"
    assert "#general (topic: Company-wide)" in user and "> it started yesterday" in user


@pytest.mark.parametrize(
    "reply",
    [
        vote("unknown", 0.9, ["acme/web", "acme/mobile"]),
        vote("acme/web", 0.3, ["acme/mobile"]),
        Reply(text="I think it's the web app!"),
        Reply(text=json.dumps({"repo": "acme/nope", "confidence": 0.99, "alternatives": [], "reason": ""})),
        Reply(status=500),
        Reply(hang=True),
    ],
    ids=["unknown", "low-confidence", "garbage", "outside-the-schema", "error", "timeout"],
)
async def test_anything_but_a_confident_answer_means_asking_never_guessing(model_classifier, model, reply):
    model.add(reply)
    result = await model_classifier.classify(VAGUE)
    assert result.repo is None and result.source == "ask"
    assert result.elapsed_ms < 2000, "the timeout bounds the wait"
    if reply.hang:
        assert result.elapsed_ms >= 450 and "no usable answer" in result.reason


async def test_hints_for_the_question_come_from_the_model_words_and_history(model_classifier, model):
    model.add(vote("unknown", 0.2, ["acme/search"]))
    ctx = RequestContext("the dashboard shows invoices twice", [], "general", recent_repos=["acme/docs"])
    result = await model_classifier.classify(ctx)
    assert result.repo is None
    assert result.alternatives[:1] == ("acme/search",)
    assert {"acme/web", "acme/api", "acme/docs"} <= set(result.alternatives)


def test_the_cli_prints_the_decision_alone_on_its_first_line(tmp_path, model):
    import os
    import subprocess
    import sys

    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "REPOS_CONFIG": str(DATA / "acme_repos.yml"),
           "DATA_DIR": str(tmp_path)}

    def cli(*args: str, **extra: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "bot.cli", "classify", *args], env={**env, **extra},
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    lines = cli("the exports are slow", "--channel", "#eng-api")
    assert lines[0] == "acme/api"
    assert lines[1:4] == ["source: channel", "confidence: 0.75", "alternatives: -"]
    assert lines[4] == "reason: #eng-api is acme/api's channel"
    assert cli("the sidebar collapses", "--channel", "general")[:2] == ["unknown", "source: ask"]
    assert cli("fix it", "--thread", "acme/search is slow")[0] == "acme/search"


async def test_the_cli_asks_the_model_when_one_is_configured(tmp_path, model):
    import asyncio
    import os
    import sys

    model.add(vote("acme/mobile", 0.8))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "classify", "the tablet layout is cramped in landscape",
        env={"PATH": os.environ["PATH"], "REPOS_CONFIG": str(DATA / "acme_repos.yml"), "DATA_DIR": str(tmp_path),
             "OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "sk-test"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert out.decode().splitlines()[:3] == ["acme/mobile", "source: model", "confidence: 0.80"]


def test_the_likeliest_repo_for_warming_is_the_channels_then_the_persons_last():
    assert RULES.likeliest(RequestContext("hm", [], "eng-web", recent_repos=["acme/api"])) == "acme/web"
    assert RULES.likeliest(RequestContext("hm", [], "general", recent_repos=["acme/nope", "acme/api"])) == "acme/api"
    assert RULES.likeliest(RequestContext("hm", [], "general")) is None
