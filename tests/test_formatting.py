"""Answers reach Slack as the model wrote them, safely, and within Slack's limits."""

from __future__ import annotations

import json

from bot.slack.format import (
    MARKDOWN_LIMIT,
    PART_LIMIT,
    ZWSP,
    Head,
    escape_mrkdwn,
    render_head,
    render_note,
    render_part,
    sanitize_markdown,
    split_markdown,
)
from tests.slack_threads import content_lines

AS_WRITTEN = """# Plan
Call `__init__` first; __init__ and __main__ stay names, *italic* stays italic, **bold** stays bold.
- see [the docs](https://docs.python.org/3/reference/datamodel.html#object.__init__)
- a & b, x > y, a <= b

> quoted

```python
def __init__(self, a: int) -> None:
    assert a < 10 and a > 0 or a == 2**3  # <, > and & as written
    self.items: dict[str, list[int]] = {}
```
Done ~~old~~ **new**."""


def test_markdown_survives_as_written() -> None:
    assert sanitize_markdown(AS_WRITTEN) == AS_WRITTEN
    _, blocks = render_part(sanitize_markdown(AS_WRITTEN), AS_WRITTEN)
    assert blocks == [{"type": "markdown", "text": AS_WRITTEN}]
    _, head_blocks = render_head(Head("U0ALICE1", "p", "0" * 16, "http://x/s/t", answer=AS_WRITTEN))
    assert {"type": "markdown", "text": AS_WRITTEN} in head_blocks


def test_slack_tokens_in_markdown_are_defused_and_read_the_same() -> None:
    model = ("cc <!channel> <!here> <!everyone> <!subteam^S0TEAM|@devs> <!date^1392734382^{date}|x> "
             "<#C0SECRET> <@U0MALLORY> <@U0ALICE1> <https://evil.example|https://good.example> <mailto:a@b.c|me>\n"
             "```\n<!here> in code\n```\n")
    out = sanitize_markdown(model, allowed={"U0ALICE1"})
    assert "<!" not in out and "<#" not in out and "<@U0MALLORY" not in out and "<https:" not in out and "<mailto" not in out
    assert "<@U0ALICE1>" in out, "people already in the session can be mentioned"
    assert out.replace(ZWSP, "") == model, "only an invisible character was added"


def test_a_link_whose_text_is_another_url_shows_where_it_goes() -> None:
    out = sanitize_markdown("[https://good.example/login](https://evil.example/steal) and [good.example](https://www.good.example/x)")
    assert "[https://good.example/login](https://evil.example/steal) (evil.example)" in out
    assert out.endswith("[good.example](https://www.good.example/x)"), "the same host is left alone"
    assert sanitize_markdown("[the trace](https://example.com/t)") == "[the trace](https://example.com/t)"
    assert "(evil.example)" not in sanitize_markdown("```\n[a.example](https://evil.example)\n```\n"), "code is code"


def test_mrkdwn_fields_escape_everything_but_the_sessions_people() -> None:
    out = escape_mrkdwn("<!here> & <@U0ALICE1> <@U0BOB0001> <https://a.example|b> <!subteam^S1|@x>", {"U0ALICE1"})
    assert out == "&lt;!here&gt; &amp; <@U0ALICE1> &lt;@U0BOB0001&gt; &lt;https://a.example|b&gt; &lt;!subteam^S1|@x&gt;"


def test_nothing_a_prompt_or_a_model_writes_becomes_a_token_in_the_head() -> None:
    head = Head("U0ALICE1", "ping <!here> and <@U0BOB0001>", "0" * 16, "http://x/s/t", allowed=frozenset({"U0ALICE1"}),
                answer=sanitize_markdown("<!channel> done", {"U0ALICE1"}), answer_preview="<!channel> done",
                activity="Running <!here>…", outcome="error", detail="model said <!everyone>")
    text, blocks = render_head(head)
    payload = json.dumps({"text": text, "blocks": blocks}, ensure_ascii=False)
    assert "<!" not in payload and "<@U0BOB0001>" not in payload
    assert text.startswith("&lt;!channel&gt; done"), "the notification shows the answer, escaped"
    assert "<@U0ALICE1> asked: ping &lt;!here&gt; and &lt;@U0BOB0001&gt;" in payload


def test_long_answers_split_at_line_ends_keeping_code_fences_balanced() -> None:
    text = "intro\n```python\n" + "\n".join(f"line {i} " + "x" * 80 for i in range(400)) + "\n```\nend\n"
    parts = split_markdown(text, 3_000)
    assert len(parts) > 5
    assert all(len(p) <= 3_000 for p in parts)
    assert all(sum(1 for line in p.splitlines() if line.startswith("```")) % 2 == 0 for p in parts)
    assert all(p.splitlines()[0] == "```python" for p in parts[1:-1]), "a cut fence is reopened with its language"
    assert content_lines("".join(parts)) == content_lines(text), "every line, in order, once"
    assert all(p.endswith("\n") or p.endswith("```") for p in parts[:-1]), "cuts fall at line ends"


def test_a_huge_line_is_wrapped_not_lost() -> None:
    parts = split_markdown("y" * 30_000)
    assert all(len(p) <= PART_LIMIT for p in parts) and "".join(parts) == "y" * 30_000


def test_an_answer_of_any_length_fits_slacks_limits() -> None:
    text = "\n".join(f"{i}: " + "word " * 30 for i in range(2_000))  # ~300,000 characters
    parts = split_markdown(sanitize_markdown(text))
    assert all(len(p) <= MARKDOWN_LIMIT for p in parts)
    assert content_lines("".join(parts)) == content_lines(text)


def test_sanitizing_is_stable_at_line_ends_so_streams_only_append() -> None:
    lines = ["see <!here> and [https://a.example](https://b.example)\n", "```\n", "<@U1> x\n", "```\n", "end <!channel>\n"]
    whole = sanitize_markdown("".join(lines))
    for k in range(len(lines)):
        assert whole.startswith(sanitize_markdown("".join(lines[:k])))


def test_notes_are_markdown_and_safe() -> None:
    ((text, blocks),) = render_note("Plan: fix `__init__` <!channel>")
    assert blocks[0]["text"].startswith(":memo: Plan: fix `__init__` <" + ZWSP + "!channel>")
    assert "<!" not in text
