"""The *View session* link opens the session; a wrong token shows nothing."""

from __future__ import annotations

import aiohttp

from tests.fakes.openai import Reply


async def test_the_session_link_shows_the_transcript_and_bad_tokens_get_404(service, slack, model):
    model.add(Reply(text="<script>alert(1)</script> fixed"))
    root = await slack.mention("U0ALICE1", "fix the <b>bug</b>")
    status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
    await slack.wait_for(lambda: "Done" in status.rendered())
    link = status.buttons()["view_session"]["url"]
    token = link.rsplit("/", 1)[1]
    base = f"http://127.0.0.1:{service.web_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/s/{token}") as resp:
            assert resp.status == 200
            html = await resp.text()
        assert "fix the &lt;b&gt;bug&lt;/b&gt;" in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt; fixed" in html and "<script>" not in html
        for bad in ("nope", token[:-1] + ("A" if token[-1] != "A" else "B"), "../../etc/passwd", "x" * 500):
            async with http.get(f"{base}/s/{bad}") as resp:
                assert resp.status == 404, bad
