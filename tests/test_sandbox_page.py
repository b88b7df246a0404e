"""The sandbox page (``/sandbox``) in a real browser: headless Debian Chromium driven by
Playwright, against the sandboxes and the bridge running in-process. Cards are rendered by
the real Adaptive Cards renderer from ``node_modules`` (``npm ci``)."""

from __future__ import annotations

import os
from urllib.parse import quote

import pytest
from playwright.async_api import async_playwright, expect

from sandbox.page import page_app, renderer_missing
from tests.harness import CHROMIUM, CHROMIUM_ARGS, ROOT, WS, require_chromium, wait_for

SCREENSHOT = ROOT / "docs" / "sandbox-page.png"
TIMEOUT_MS = 20_000


def _needs() -> None:
    """Fail (never skip) with what to install when the browser or the renderer is missing."""
    require_chromium()
    if problem := renderer_missing():
        pytest.fail(problem)


@pytest.fixture
async def page(connected, aiohttp_server):
    """The page served by a test server next to the sandboxes, open in headless Chromium."""
    _needs()
    server = await aiohttp_server(page_app(connected.neeto_url, connected.ms.base_url, workspace=WS))
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = await browser.new_page(viewport={"width": 1440, "height": 900})
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            await tab.goto(str(server.make_url("/sandbox")))
            yield tab
            assert not errors, errors
        finally:
            await browser.close()


@pytest.mark.parametrize("bridge", ["sqlite"], indirect=True)  # the browser is what is tested here
async def test_both_sides_live_in_the_browser(connected, page, tmp_path):
    h = connected
    await expect(page.locator("#team-name")).to_have_text("team Support")
    await expect(page.locator("#channels .channel-item.selected")).to_have_text("# General")
    await expect(page.locator("#status")).to_contain_text("live")

    # The visitor starts a conversation in the widget.
    form = page.locator("#new-conversation")
    await form.locator("[name=visitor_name]").fill("Vera Jones")
    await form.locator("[name=visitor_email]").fill("vera@example.com")
    await form.locator("[name=message]").fill("Hi, my order #42 hasn't arrived")
    await form.get_by_role("button", name="Start conversation").click()
    await expect(page.locator("#conversations .conversation.selected")).to_contain_text("#1042")
    widget = page.locator("#widget-messages")
    await expect(widget.locator(".message.visitor .bubble")).to_have_text(["Hi, my order #42 hasn't arrived"])
    events = await wait_for(lambda: h.neeto.events(WS), what="the conversation in neetoChat")
    conversation_id = events[0]["data"]["conversation"]["id"]

    # The bridge makes the channel; the page opens it and shows the card, rendered by the
    # Adaptive Cards renderer (its own classes), Markdown escapes undone by markdown-it.
    await expect(page.locator("#channels .channel-item.selected")).to_have_text("# 1042 Vera Jones")
    card = page.locator("#posts .card .ac-adaptiveCard").first
    heading = card.locator(".ac-richTextBlock, .ac-textBlock").first
    await expect(heading).to_have_text("A conversation started by vera@example.com")
    await expect(card.locator(".ac-factset").first).to_contain_text("Unassigned")

    # Ada presses "Assign to me" on the card: the bridge assigns in neetoChat and refreshes the card.
    await expect(page.locator("#write-as option:checked")).to_have_text("Ada Agent")
    await card.get_by_role("button", name="Assign to me").click()
    await expect(card.locator(".ac-factset").first).to_contain_text("Ada Agent (Agent)")
    assert h.neeto.conversation(WS, conversation_id)["assignee"]["id"] == h.ada_agent["id"]

    # Ada writes in the channel; the visitor sees her message in the widget.
    await page.locator("#teams-input").fill("Sorry about that, checking now")
    await page.locator("#teams-form").get_by_role("button", name="Post").click()
    agent_message = widget.locator(".message.agent")
    await expect(agent_message.locator(".bubble")).to_have_text(["Sorry about that, checking now"])
    await expect(agent_message.locator(".meta")).to_contain_text(["Ada Agent"])

    # The visitor answers in the widget; it shows in the channel as the bot's post.
    await page.locator("#visitor-input").fill("Thanks! <b>no markup</b> here")
    await page.locator("#visitor-form").get_by_role("button", name="Send").click()
    post = page.locator("#posts .post.bot", has_text="Thanks!")
    await expect(post.locator(".post-body")).to_contain_text("Thanks! <b>no markup</b> here")
    await expect(post.locator(".post-body b", has_text="no markup")).to_have_count(0)

    # Olly (not an agent) replies in Ada's thread: it reaches the visitor as the admin.
    await page.locator("#write-as").select_option(label="Olly Outsider")
    ada_thread = page.locator("#posts .thread", has=page.locator(".post:not(.bot)", has_text="checking now"))
    await ada_thread.get_by_role("button", name="Reply").click()
    await expect(page.locator("#reply-text")).to_have_text("Replying to Ada Agent's post")
    await page.locator("#teams-input").fill("Courier says tomorrow")
    await page.locator("#teams-form").get_by_role("button", name="Post").click()
    await expect(ada_thread.locator(".replies .post").first).to_contain_text("Courier says tomorrow")
    await expect(agent_message.locator(".bubble")).to_have_text(
        ["Sorry about that, checking now", "Courier says tomorrow"]
    )

    # docs/ keeps the README's picture; regenerate it on purpose with UPDATE_SCREENSHOTS=1
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / SCREENSHOT.name
    await page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000


async def test_the_page_reaches_only_the_control_routes(sandbox, aiohttp_client):
    """Without a browser: the page's own routes and what it forwards to the sandboxes."""
    h = sandbox
    client = await aiohttp_client(page_app(h.neeto_url, h.ms.base_url, workspace=WS))
    resp = await client.get("/sandbox")
    assert resp.status == 200 and "/sandbox/vendor/adaptivecards.min.js" in await resp.text()
    assert (await client.get("/sandbox/vendor/adaptivecards.min.js")).status == 200
    config = await (await client.get("/sandbox/config.json")).json()
    assert config["renderer_missing"] is None

    teams = (await (await client.get(config["teams"] + "/teams")).json())["teams"]
    assert [m["name"] for m in teams[0]["members"]] == ["Adam Admin", "Ada Agent", "Olly Outsider"]
    general = quote(h.team_id, safe="")  # 19:…@thread.tacv2, percent-encoded as the page sends it
    channels = (await (await client.get(f"{config['teams']}/teams/{general}/channels")).json())["channels"]
    assert [(c["displayName"], c["general"]) for c in channels] == [("General", True)]
    resp = await client.post(
        f"{config['teams']}/teams/{general}/channels/{general}/posts", json={"user": "OLLY@partner.test", "text": "hi"}
    )
    assert resp.status == 201 and (await resp.json())["bot_status"] is None  # the app is not installed yet
    assert [p["text"] for p in h.ms.posts(h.team_id)] == ["hi"]
    resp = await client.post(f"{config['teams']}/teams/{general}/channels/{general}/posts", json={"user": "x@y.z"})
    assert resp.status == 404

    conversation = h.neeto.start_conversation(WS, visitor_name="Vera", visitor_email=None, message="hello")
    resp = await client.post(
        f"{config['neetochat']}/conversations/{conversation['id']}/visitor_messages", json={"body": "anyone?"}
    )
    assert resp.status == 201
    assert [m["body"] for m in h.neeto.messages(WS, conversation["id"])] == ["hello", "anyone?"]

    # Nothing but control routes: not the neetoChat API, not Graph or the connector.
    assert (await client.get("/sandbox/neetochat/acme/api/v1/agents")).status == 404
    assert (await client.get("/sandbox/teams/v1.0/teams")).status == 404


async def test_without_npm_ci_the_page_says_what_to_run(sandbox, aiohttp_client, tmp_path):
    client = await aiohttp_client(page_app(sandbox.neeto_url, sandbox.ms.base_url, workspace=WS, node_modules=tmp_path))
    config = await (await client.get("/sandbox/config.json")).json()
    assert "npm ci" in config["renderer_missing"]
    resp = await client.get("/sandbox/vendor/adaptivecards.min.js")
    assert resp.status == 404 and "npm ci" in await resp.text()
