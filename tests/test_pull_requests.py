"""End to end on the real Docker engine: a person links GitHub, their session's agent edits a file
and opens a PR in their name (a second prompter as co-author), GitHub's merge comes back through a
signed webhook, and no token is left anywhere it should not be."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from bot.service import Service
from bot.slack.messages import thread_surface
from sandbox.protocol import SANDBOX_UID
from tests.conftest import make_settings, service_env
from tests.fakes.github import FakeGitHub
from tests.fakes.openai import Reply, ToolCall
from tests.fakes.slack import Message
from tests.github_fixtures import github, github_env  # noqa: F401 (fixture)
from tests.sandbox_fixtures import APP, TEST, _docker_client, repos_yaml
from tests.slack_threads import all_done, turns
from tests.test_github_link import link
from tests.test_sandbox_sessions import until
from tests.web_client import signed_in

pytestmark = pytest.mark.usefixtures("docker_cleanup")


async def start(tmp_path: Path, slack, model, github: FakeGitHub) -> Service:  # type: ignore[no-untyped-def]  # noqa: F811
    github.add_repo("acme", "api", {"app.py": APP, "test_app.py": TEST})  # private: cloning needs the App's token
    repos = repos_yaml(tmp_path / "repos.yml", github.clone_url("acme", "api"))
    env = service_env(tmp_path / "data", slack, model, repos_config=repos, sandbox_memory="512m", sandbox_pids=256,
                      image_rebuild_interval=0, sandbox_network="host", **github_env(github))
    svc = Service(make_settings(env))
    await svc.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    assert svc.sandbox is not None
    await until(lambda: svc.sandbox.images.latest("acme/api"), what="the image build (a private clone)")  # type: ignore[union-attr]
    return svc


def thread_says(slack, root: str, text: str) -> bool:  # type: ignore[no-untyped-def]
    return any(text in m.rendered() for m in slack.bot_messages(thread_ts=root))


def archive_bytes(container, path: str) -> bytes:  # type: ignore[no-untyped-def]
    """Every file under `path` in the container (volumes included), concatenated."""
    try:
        stream, _ = container.get_archive(path)
    except Exception:
        return b""
    data = b"".join(stream)
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                f = tar.extractfile(member)
                out.append(f.read() if f else b"")
    return b"\n".join(out)


async def test_a_linked_persons_session_opens_a_pr_in_their_name_and_leaks_no_token(
        tmp_path: Path, slack, model, github: FakeGitHub, docker_engine, caplog):  # type: ignore[no-untyped-def]  # noqa: F811
    github.add_user("alice-gh", 5001, "Alice Example")
    github.add_user("bob-gh", 5002, "Bob Builder")
    svc = await start(tmp_path, slack, model, github)
    try:
        await link(svc, slack, github, "U0ALICE1", "alice-gh")
        await link(svc, slack, github, "U0BOB001", "bob-gh")

        model.add(Reply(tool_calls=[ToolCall("edit_file", {"path": "app.py", "old_text": "return a - b",
                                                           "new_text": "return a + b"})]), Reply(text="Fixed it."))
        root = await slack.mention("U0ALICE1", "in acme/api the add function is broken, fix it")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=60)
        model.add(Reply(text="Yes: it is plain addition."))
        await slack.user_message("U0BOB001", "does it handle negatives?", thread_ts=root)
        await slack.wait_for(lambda: all_done(slack, root, 2), timeout=60)
        model.add(Reply(tool_calls=[ToolCall("open_pull_request", {"title": "Fix add", "body": "It subtracted."})]),
                  Reply(text="Opened the PR."))
        await slack.user_message("U0ALICE1", "open a PR please", thread_ts=root)
        await slack.wait_for(lambda: all_done(slack, root, 3), timeout=60)

        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        assert session is not None
        pr = github.pull("acme", "api", 1)
        assert pr.user == "alice-gh" and not pr.via_app, "opened with Alice's own token"
        created = [c for c in github.calls if c.method == "POST" and c.path == "/repos/acme/api/pulls"]
        assert len(created) == 1 and github.tokens[created[0].token].login == "alice-gh"
        assert pr.head.startswith(f"agent/{session.id[:8]}-fix-add") and pr.base == "main"
        assert "Asked by Alice" in (pr.body or "") and "/s/" in (pr.body or "")
        commit = github.commit_info("acme", "api", github.branch_head("acme", "api", pr.head) or "")
        assert (commit.author_name, commit.author_email) == ("Alice Example", "5001+alice-gh@users.noreply.github.com")
        assert commit.committer_name == "hosted-agents[bot]"
        assert ("Co-authored-by", "Bob Builder <5002+bob-gh@users.noreply.github.com>") in commit.trailers
        assert github.read_file("acme", "api", pr.head, "app.py") == "def add(a, b):\n    return a + b\n"
        assert [p.token for p in github.pushes if github.tokens[p.token].kind != "installation"] == [], \
            "pushes go with the App's installation token"
        await slack.wait_for(lambda: thread_says(slack, root, "opened"), what="the PR in the thread")

        # GitHub says it was merged: a bad signature changes nothing, a replay changes nothing more
        url = f"http://127.0.0.1:{svc.web_port}/webhooks/github"
        merged = github.merge("acme", "api", 1, by="bob-gh")
        assert await github.deliver(url, "pull_request", merged, secret="not-the-secret") == 401
        assert (await svc.pull_requests.records.find("acme/api", 1)).state == "open"  # type: ignore[union-attr]
        delivery = str(uuid.uuid4())
        assert await github.deliver(url, "pull_request", merged, delivery_id=delivery) == 200
        assert await github.deliver(url, "pull_request", merged, delivery_id=delivery) == 200
        row = await svc.pull_requests.records.find("acme/api", 1)
        assert row is not None and row.state == "merged" and row.merged_at and row.author == "U0ALICE1"
        await slack.wait_for(lambda: thread_says(slack, root, "was merged"), what="the merge in the thread")
        assert sum("was merged" in m.rendered() for m in slack.bot_messages(thread_ts=root)) == 1

        # no token anywhere it should not be
        await until(lambda: svc.sandbox.manager.snapshots.image(session.id), what="the snapshot")  # type: ignore[union-attr]
        values = [t.value.encode() for t in github.tokens.values()]
        assert len(values) >= 3
        # as themselves, and as git's Basic auth header carries them
        tokens = values + [base64.b64encode(b"x-access-token:" + v) for v in values]
        client = _docker_client()
        sandbox = svc.sandbox.manager.get(session.id)  # type: ignore[union-attr]
        assert sandbox is not None and sandbox.ref is not None
        container = client.containers.get(sandbox.ref.id)
        places: dict[str, bytes] = {"container env": json.dumps(container.attrs["Config"]["Env"]).encode()}
        places["/proc/*/environ"] = container.exec_run(["sh", "-c", "cat /proc/[0-9]*/environ"], user="root").output
        places["git config"] = container.exec_run(["git", "config", "--list", "--show-origin"], workdir="/workspace",
                                                  user=str(SANDBOX_UID)).output
        assert b"remote.origin.url" in places["git config"], places["git config"]
        for path in ("/workspace", "/home", "/tmp", "/var/tmp", "/etc", "/root"):
            places[path] = archive_bytes(container, path)
        if sandbox.snapshotting is not None:  # a later turn's snapshot replaces (and removes) the one read above
            await asyncio.gather(sandbox.snapshotting, return_exceptions=True)
        for image in {await svc.sandbox.manager.snapshots.image(session.id), await svc.sandbox.images.latest("acme/api")}:  # type: ignore[union-attr]
            assert image
            found = client.images.get(image)
            places[f"image {image}"] = json.dumps([found.attrs, found.history()]).encode()
        places["service log"] = caplog.text.encode()
        log_file = svc.settings.data_dir / "sessions" / f"{session.id}.sqlite3"
        places["event log"] = b"".join(p.read_bytes() for p in log_file.parent.glob(f"{session.id}.sqlite3*"))
        places["central database"] = b"".join(p.read_bytes() for p in svc.settings.data_dir.glob("hosted-agents.db*"))
        assert places["/workspace"] and b"return a + b" in places["/workspace"], "the scan reads the workspace"
        leaks = [(where, token.decode()[:8]) for where, data in places.items() for token in tokens if token in data]
        assert leaks == []
    finally:
        await svc.stop()


async def test_without_a_linked_account_the_person_is_offered_the_link_or_a_pr_as_the_app(
        tmp_path: Path, slack, model, github: FakeGitHub, docker_engine):  # type: ignore[no-untyped-def]  # noqa: F811
    svc = await start(tmp_path, slack, model, github)
    try:
        fix = ToolCall("edit_file", {"path": "app.py", "old_text": "return a - b", "new_text": "return a + b"})
        model.add(Reply(tool_calls=[fix]), Reply(text="Fixed it."))
        root = await slack.mention("U0CAROL1", "in acme/api the add function is broken, fix it")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=60)
        head = turns(slack, root)[0].head
        carol = await signed_in(svc, slack, "U0CAROL1")  # the page's button says the same, with the link
        status, answer = await carol.post(f"/s/{head.buttons()['view_session']['url'].rsplit('/', 1)[1]}/pull-request")
        await carol.close()
        assert status == 422 and answer["reason"] == "not_linked" and answer["connect"] == "/github/connect"
        await slack.click("U0CAROL1", head, "create_pr")
        offers = await slack.wait_for(lambda: [c.params for c in slack.calls_to("chat.postEphemeral")
                                               if "Connect GitHub" in json.dumps(c.params)], what="the private offer")
        assert offers[0]["user"] == "U0CAROL1" and offers[0]["thread_ts"] == root
        blocks = offers[0]["blocks"] if isinstance(offers[0]["blocks"], list) else json.loads(offers[0]["blocks"])
        offer = Message(offers[0]["channel"], slack.next_ts(), slack.bot_user_id, offers[0]["text"], root, blocks, bot=True)
        assert "/auth/link/" in offer.buttons()["connect_github_link"]["url"]
        assert "next=/github/connect" in offer.buttons()["connect_github_link"]["url"]
        assert not [c for c in github.calls if c.method == "POST" and c.path == "/repos/acme/api/pulls"], \
            "nothing is opened until they choose"
        await slack.click("U0CAROL1", offer, "create_pr_as_app")
        await slack.wait_for(lambda: thread_says(slack, root, "as the GitHub App"), timeout=30, what="the PR, as the App")
        pr = github.pull("acme", "api", 1)
        assert pr.via_app and pr.user == "hosted-agents[bot]"
        before = github.branch_head("acme", "api", pr.head)

        # a follow-up's changes go to the same PR, and the thread says so
        doc = ToolCall("edit_file", {"path": "app.py", "old_text": "def add(a, b):\n",
                                     "new_text": "def add(a, b):\n    \"\"\"The sum.\"\"\"\n"})
        model.add(Reply(tool_calls=[doc]), Reply(text="Documented."))
        await slack.user_message("U0CAROL1", "add a docstring", thread_ts=root)
        await slack.wait_for(lambda: all_done(slack, root, 2), timeout=60)
        await slack.wait_for(lambda: thread_says(slack, root, "Pushed new commits"), what="the push in the thread")
        after = github.branch_head("acme", "api", pr.head)
        assert after != before and '"""The sum."""' in (github.read_file("acme", "api", pr.head, "app.py") or "")
        assert len([c for c in github.calls if c.method == "POST" and c.path == "/repos/acme/api/pulls"]) == 1
    finally:
        await svc.stop()
