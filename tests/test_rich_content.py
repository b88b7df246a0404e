"""Rich content between Teams and the visitor: formatted text, mentions, emoji, inline
images, GIFs, stickers, videos and files, each from a JSON fixture shaped like what Teams
sends (tests/fixtures/teams/), checked by what the visitor gets in neetoChat (body,
attachments, and the bytes behind each attachment's URL)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cards.notices import message_html
from services.teams_text import parse_teams_html
from tests.harness import WS, wait_for
from tests.test_authenticated import authenticated  # noqa: F401 - the fixture

FIXTURES = Path(__file__).parent / "fixtures" / "teams"
MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/gif": b"GIF89a", "image/jpeg": b"\xff\xd8\xff\xe0",
         "video/mp4": b"\x00\x00\x00\x18ftypmp42", "application/pdf": b"%PDF-1.7\n"}


def _bytes(content_type: str, size: int, seed: int) -> bytes:
    head = MAGIC.get(content_type, b"")
    body = bytes((i * 31 + seed) % 256 for i in range(min(size, 65536)))
    filler = (body * (size // max(len(body), 1) + 1))[: max(0, size - len(head))]
    return head + filler


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(r"\{([A-Za-z0-9_:.]+)\}", lambda m: names.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


def _register(h, channel_id: str, content: dict[str, Any]) -> tuple[dict[str, str], dict[str, bytes]]:
    """Put the fixture's content into the Microsoft sandbox; placeholder values and bytes."""
    names: dict[str, str] = {}
    blobs: dict[str, bytes] = {}
    for user in ("ada", "olly", "adam"):
        names[f"USER:{user}.id"] = getattr(h, user)["id"]
        names[f"USER:{user}.name"] = getattr(h, user)["name"]
    for seed, (key, spec) in enumerate(content.items()):
        data = _bytes(spec["content_type"], spec["size"], seed)
        blobs[key] = data
        if spec["type"] == "inline_image":
            image = h.ms.upload_inline_image(data, spec["content_type"])
            names[f"{key}.contentUrl"] = image["attachment"]["contentUrl"]
            names[f"{key}.amsUrl"] = re.search(r'src="([^"]+)"', image["html"]).group(1)
            if spec.get("unreachable"):
                h.ms.make_unreachable(image["id"])
        elif spec["type"] == "file":
            shared = h.ms.add_channel_file(h.team_id, channel_id, spec["name"], data, spec["content_type"],
                                           forbidden=spec.get("forbidden", False))
            names[f"{key}.url"] = shared["url"]
        elif spec["type"] == "media":
            names[f"{key}.url"] = h.ms.add_public_media(spec["name"], data, spec["content_type"])
        else:
            raise AssertionError(f"unknown content type {spec['type']}")
    return names, blobs


def _thread_replies(h, channel_id: str, post_id: str) -> list[str]:
    for post in h.ms.posts(channel_id):
        if post["id"] == post_id:
            return [html.unescape(r["text"] or "") for r in post["replies"]]
    return []


async def _download(h, url: str) -> bytes:
    async with h.http.get(url) as resp:
        assert resp.status == 200, url
        return await resp.read()


async def _open_conversation(h, name: str):
    conv = h.neeto.start_conversation(WS, visitor_name=name, visitor_email=f"{name.lower()}@example.com",
                                      message="hello")
    channel = await h.wait_channel(conv["number"])
    await wait_for(lambda: h.ms.posts(channel["id"]), what="the intro post")
    return conv, channel


@pytest.mark.parametrize("fixture", sorted(p.stem for p in FIXTURES.glob("*.json")))
async def test_what_a_teams_user_sends_is_what_the_visitor_gets(connected, fixture):
    h = connected
    spec = json.loads((FIXTURES / f"{fixture}.json").read_text())
    conv, channel = await _open_conversation(h, "Rita")
    names, blobs = _register(h, channel["id"], spec["content"])
    activity = _fill(spec["activity"], names)
    expect = _fill(spec["expect"], names)

    sent = await h.ms.user_posts(
        h.team_id, channel["id"], h.ada, activity["html"], attachments=activity["attachments"],
        entities=activity["entities"], mention_bot=spec.get("mention_bot", False),
    )
    assert sent["status"] in (200, 201)
    msg = (await wait_for(lambda: h.from_teams(conv["id"]), what="the message in neetoChat"))[0]

    assert msg["body"] == expect["body"]
    assert msg["external_id"] == sent["activity"]["id"]
    got = [{k: a[k] for k in ("filename", "content_type", "size")} for a in msg["attachments"]]
    assert got == [{k: a[k] for k in ("filename", "content_type", "size")} for a in expect["attachments"]]
    for attachment, wanted in zip(msg["attachments"], expect["attachments"], strict=True):
        assert await _download(h, attachment["url"]) == blobs[wanted["content"]]

    post_id = sent["activity"]["id"]
    if expect["notice"]:
        replies = await wait_for(lambda: _thread_replies(h, channel["id"], post_id), what="the notice")
        assert any(expect["notice"] in r for r in replies), replies
    else:
        await h.neeto.drain_webhooks()
        assert _thread_replies(h, channel["id"], post_id) == []


async def test_the_inline_image_comes_from_graph_when_the_connector_refuses(connected):
    h = connected
    conv, channel = await _open_conversation(h, "Sam")
    data = _bytes("image/png", 1500, 7)
    image = h.ms.upload_inline_image(data, "image/png")
    h.ms.fail_next(404, count=1, path_contains="/v3/attachments/", retry_after=None)
    root = h.ms.posts(channel["id"])[0]["id"]
    await h.ms.user_posts(h.team_id, channel["id"], h.olly, "<p>in a thread</p>" + image["html"],
                          attachments=[image["attachment"]], reply_to=root)
    msg = (await wait_for(lambda: h.from_teams(conv["id"]), what="the reply in neetoChat"))[0]
    assert msg["body"] == "in a thread"
    assert [a["content_type"] for a in msg["attachments"]] == ["image/png"]
    assert await _download(h, msg["attachments"][0]["url"]) == data
    paths = [r["path"] for r in h.ms.requests]
    assert any("/replies/" in p and "/hostedContents/" in p for p in paths)  # the Graph fallback was used
    assert not any(p.startswith("/ams/") for p in paths)  # the HTML's AMS URL is never fetched


async def test_a_retried_job_uploads_nothing_twice(connected):
    h = connected
    conv, channel = await _open_conversation(h, "Tom")
    doc = h.ms.add_channel_file(h.team_id, channel["id"], "terms.pdf", _bytes("application/pdf", 900, 3),
                                "application/pdf")
    h.neeto.fail_next(WS, status=503, count=1, method="POST", path_contains="/messages")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "<p>terms</p>", attachments=[doc["attachment"]])
    msg = (await wait_for(lambda: h.from_teams(conv["id"]), timeout=30, what="the message after a retry"))[0]
    assert [a["filename"] for a in msg["attachments"]] == ["terms.pdf"]
    stored = [a for a in h.neeto._workspaces[WS].attachments.values() if a.public["filename"] == "terms.pdf"]
    assert len(stored) == 1  # the retry's upload replayed the first answer (Idempotency-Key)


async def test_a_type_neetochat_refuses_becomes_a_link_and_a_notice(connected):
    h = connected
    conv, channel = await _open_conversation(h, "Uma")
    tool = h.ms.add_channel_file(h.team_id, channel["id"], "setup.exe", b"MZ" + b"\0" * 500,
                                 "application/x-msdownload")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "<p>installer</p>",
                                 attachments=[tool["attachment"]])
    msg = (await wait_for(lambda: h.from_teams(conv["id"]), what="the message"))[0]
    assert msg["attachments"] == []
    assert msg["body"] == f"installer\n📎 setup.exe (application/x-msdownload, 502 B): {tool['url']}"
    replies = await wait_for(lambda: _thread_replies(h, channel["id"], sent["activity"]["id"]), what="notice")
    assert "neetoChat does not accept files of this type" in replies[0]


async def test_a_neetochat_image_shows_as_a_thumbnail_in_teams(connected):
    h = connected
    conv, channel = await _open_conversation(h, "Vic")
    h.neeto.visitor_writes(WS, conv["id"], "my screen", attachments=[
        {"filename": "screen.png", "content_type": "image/png", "content": _bytes("image/png", 2048, 1)},
        {"filename": "notes.pdf", "content_type": "application/pdf", "content": _bytes("application/pdf", 900, 2)},
    ])
    post = (await wait_for(lambda: h.ms.posts(channel["id"])[1:], what="the message with the image"))[0]
    png, pdf = h.neeto.messages(WS, conv["id"])[-1]["attachments"]
    text = post["text"]
    assert f'<a href="{png["url"]}">screen.png</a> (image/png, 2.0 KB)' in text
    assert f'<img src="{png["url"]}" alt="screen.png"' in text
    assert f'<a href="{pdf["url"]}">notes.pdf</a>' in text and f'<img src="{pdf["url"]}"' not in text


# ---------------------------------------------------------------- pure pieces


def test_only_web_images_get_a_thumbnail_and_everything_is_escaped():
    message = {"sender": {"type": "visitor", "name": "V"}, "body": "", "attachments": [
        {"filename": 'x"><script>.png', "content_type": "image/png", "size": 10,
         "url": 'https://files.example/x.png?a=1&b="2"'},
        {"filename": "y.png", "content_type": "image/png", "size": 10, "url": "javascript:alert(1)"},
        {"filename": "z.svg", "content_type": "image/svg+xml", "size": 10, "url": "https://files.example/z.svg"},
    ]}
    out = message_html(message)
    assert out.count("<img") == 1
    assert '<img src="https://files.example/x.png?a=1&amp;b=&quot;2&quot;" alt="x&quot;&gt;&lt;script&gt;.png"' in out


def test_teams_html_keeps_everything_typed():
    parsed = parse_teams_html(
        "<div><div>\n<p>a  b\n c</p><table><tr><th>Plan</th><th>Price</th></tr><tr><td>Pro</td><td>$9</td></tr>"
        "</table><p><a href=\"https://x.test/\">https://x.test/</a> and <a href=\"mailto:me@x.test\">me@x.test</a>"
        "</p><hr><p>1 &lt; 2</p><script>ignored()</script></div></div>"
    )
    assert parsed.text == "a b c\nPlan | Price\nPro | $9\nhttps://x.test/ and me@x.test\n---\n1 < 2"
    assert parsed.media == []


# ---------------------------------------------------------------- with tokens


async def test_downloads_carry_the_bots_tokens_in_authenticated_mode(authenticated):  # noqa: F811
    h = authenticated
    await h.connect()
    conv, channel = await _open_conversation(h, "Wes")
    data = _bytes("image/png", 1200, 5)
    image = h.ms.upload_inline_image(data, "image/png")
    doc = h.ms.add_channel_file(h.team_id, channel["id"], "a.pdf", _bytes("application/pdf", 700, 6), "application/pdf")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "<p>both</p>" + image["html"],
                          attachments=[image["attachment"], doc["attachment"]])
    msg = (await wait_for(lambda: h.from_teams(conv["id"]), timeout=30, what="the message"))[0]
    assert [a["filename"] for a in msg["attachments"]] == ["image.png", "a.pdf"]
    connector = [r for r in h.ms.requests if "/v3/attachments/" in r["path"]]
    assert connector and all(r["status"] == 200 and r["authorization"] for r in connector)
    shares = [r for r in h.ms.requests if r["path"].startswith("/v1.0/shares/")]
    assert shares and all(r["authorization"] and r["status"] in (200, 302) for r in shares)
    assert any(r["path"].startswith("/_download/") for r in h.ms.requests)  # Graph's 302 was followed
