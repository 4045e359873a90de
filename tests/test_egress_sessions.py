"""The default network end to end: a session's sandbox reaches only what SANDBOX_EGRESS_ALLOW names,
through the proxy, and every connection it makes (a refused one too) is an event of that session."""

from __future__ import annotations

from bot.events import Egress
from bot.slack.messages import thread_surface
from tests.fakes.openai import Reply, ToolCall
from tests.sandbox_fixtures import GitRemote
from tests.test_sandbox_sessions import finished, start_service, tool_results, until

FETCH = ("python3 -c \"import urllib.request as u\n"
         "for url in ('{git}/info/refs?service=git-upload-pack', 'http://example.com/', 'http://127.0.0.1:5432/'):\n"
         "    try: print(url, u.urlopen(url, timeout=10).status)\n"
         "    except Exception as e: print(url, 'failed', e)\"")


async def test_a_sessions_connections_are_its_events_and_only_allowed_hosts_answer(tmp_path, slack, model,
                                                                                 git_remote: GitRemote):
    host = f"127.0.0.1:{git_remote.port}"
    svc = await start_service(tmp_path, slack, model, git_remote.url, sandbox_network="proxy",
                              sandbox_egress_allow=host)
    try:
        model.add(Reply(tool_calls=[ToolCall("run_command", {"command": FETCH.format(git=git_remote.url)})]))
        root = await slack.mention("U0ALICE1", "check the network")
        await slack.wait_for(lambda: finished(slack, root), timeout=90, what="the turn")
        output = tool_results(model, 1)[0]
        assert "info/refs?service=git-upload-pack 200" in output, output
        assert "http://example.com/ failed" in output and "http://127.0.0.1:5432/ failed" in output, output
        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        assert session is not None

        async def egress() -> list[Egress]:
            events = svc.sessions.log_of(session.id).read()
            found = [e.data for e in events if isinstance(e.data, Egress)]
            return found if len(found) >= 3 else []

        seen = {(e.host, e.port): e for e in await until(egress, timeout=10, what="three egress events")}
        assert seen[("127.0.0.1", git_remote.port)].allowed and seen[("127.0.0.1", git_remote.port)].bytes_down > 0
        assert not seen[("example.com", 80)].allowed and not seen[("127.0.0.1", 5432)].allowed
    finally:
        await svc.stop()
