"""Slack rendering stays inside Block Kit's limits and converts the Markdown models write."""

from __future__ import annotations

from bot.slack.format import TurnState, markdown_to_mrkdwn, render_turn, split_sections


def test_markdown_becomes_mrkdwn_and_code_is_left_alone():
    md = "# Plan\n**Bold** and ~~old~~ [docs](https://x.test/a?b=1&c=2)\n- one\n```python\nx = a**2 < b\n```\n`<@U123>`"
    out = markdown_to_mrkdwn(md)
    assert out.startswith("*Plan*\n*Bold* and ~old~ <https://x.test/a?b=1&amp;c=2|docs>\n• one\n")
    assert "```\nx = a**2 &lt; b\n```" in out
    assert "`&lt;@U123&gt;`" in out


def test_a_model_can_mention_people_but_not_ping_the_channel():
    out = markdown_to_mrkdwn("thanks <@U0ALICE1>, cc <!channel> <!here>")
    assert "<@U0ALICE1>" in out
    assert "<!channel>" not in out and "<!here>" not in out


def test_long_answers_split_into_sections_that_keep_code_fences_balanced():
    text = "intro\n```\n" + "\n".join(f"line {i} " + "x" * 80 for i in range(200)) + "\n```\nend"
    parts = split_sections(text)
    assert len(parts) > 1
    assert all(len(p) <= 2900 for p in parts)
    assert all(p.count("```") % 2 == 0 for p in parts)
    assert split_sections("y" * 10_000)  # one huge line is hard-wrapped
    assert all(len(p) <= 2900 for p in split_sections("y" * 10_000))


def test_a_huge_answer_stays_within_fifty_blocks():
    state = TurnState(author="U1", prompt="p", session_id="0" * 16, session_url="http://x/s/t", text="word " * 60_000)
    text, blocks = render_turn(state)
    assert len(blocks) <= 50
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")
    assert len(text) <= 3000
    assert "the rest is in the session view" in blocks[-3]["text"]["text"]
