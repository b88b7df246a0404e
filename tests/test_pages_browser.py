"""The Login to Teams pages in a real browser: headless Debian Chromium driven by Playwright.

Reuses the ``signin`` fixture of ``tests/test_signin.py``: the bridge in-process in
authenticated mode, the identity sandbox over TLS (a throwaway test CA) and the Microsoft
sandbox. Chromium is told to trust exactly that server's key with
``--ignore-certificate-errors-spki-list`` (the SHA-256 of the test certificate's public
key): every other certificate error still fails, unlike ``ignore_https_errors``.

Screenshots go to ``tmp_path``, or to ``docs/screenshots/`` with ``UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.async_api import Page, async_playwright, expect

from tests import test_signin
from tests.harness import CHROMIUM, CHROMIUM_ARGS, ROOT, WS, require_chromium, wait_for
from tests.test_signin import SignIn, add_channel

signin = test_signin.signin  # the fixture, shared with tests/test_signin.py

TIMEOUT_MS = 20_000
VIEWPORT = {"width": 960, "height": 540}


def _spki_sha256(cert_path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a certificate, as Chromium's SPKI list wants it."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def shots(tmp_path) -> Path:
    directory = ROOT / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "shots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
async def page(signin: SignIn):
    """A fresh headless Chromium tab that trusts only the test server's key besides the system CAs."""
    require_chromium()
    errors: list[str] = []
    args = [*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={_spki_sha256(signin.tls.cert_path)}"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            context = await browser.new_context(viewport=VIEWPORT)
            tab = await context.new_page()
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            yield tab
            assert not errors, errors
        finally:
            await browser.close()


async def _sign_in(s: SignIn, page: Page, as_name: str = "Adam Admin") -> None:
    """Open the signed link and sign in on the identity sandbox's page."""
    response = await page.goto(s.link())
    assert response is not None and response.ok
    assert page.url.startswith("https://127.0.0.1:"), page.url  # the sign-in page, over TLS
    await page.get_by_role("link", name=f"Sign in as {as_name}").click()


async def test_login_pick_team_and_save_settings_in_the_browser(signin, page, shots):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    escalations = add_channel(h, h.team_id, "Escalations")

    await _sign_in(s, page)
    await expect(page.get_by_role("heading", name="Choose a team")).to_be_visible()
    await expect(page.get_by_text("Signed in as Adam Admin")).to_be_visible()
    await expect(page.get_by_label("Support")).to_be_checked()
    await page.screenshot(path=str(shots / "team-picker.png"), full_page=True)

    await page.get_by_label("Support").check()
    await page.get_by_role("button", name="Link this team").click()
    await expect(page.get_by_label("Notification channel")).to_be_visible()
    select = page.get_by_label("Notification channel")
    await expect(select.locator("option:checked")).to_have_text("General")
    await expect(page.get_by_label("New conversations")).to_be_checked()
    await expect(page.get_by_label("post its transcript")).to_be_checked()
    await wait_for(lambda: h.ms.posts(h.team_id), what="the link confirmation in General")
    await page.screenshot(path=str(shots / "settings.png"), full_page=True)

    await select.select_option(label="Escalations")
    await page.get_by_label("All conversation activity").check()
    await page.get_by_label("post its transcript").uncheck()
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.get_by_text("Saved.")).to_be_visible()
    await expect(page.get_by_label("Notification channel").locator("option:checked")).to_have_text("Escalations")
    await expect(page.get_by_label("All conversation activity")).to_be_checked()
    await expect(page.get_by_label("post its transcript")).not_to_be_checked()
    await page.screenshot(path=str(shots / "settings-saved.png"), full_page=True)

    ws = await s.workspace()
    assert ws.team_id == h.team_id and ws.authorizing_user["aad_object_id"] == h.adam["aadObjectId"]
    assert ws.notification_channel_id == escalations and ws.update_type == "all_activity"
    assert ws.transcript_on_close is False


async def test_people_and_check_setup_in_the_browser(signin, page, shots):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    await _sign_in(s, page)
    await page.get_by_role("button", name="Link this team").click()
    olly = page.get_by_label("Olly Outsider writes as")
    await expect(olly.locator("option:checked")).to_have_text("Match by email (none: Adam Admin)")
    await expect(page.get_by_role("row", name=re.compile("Ada Agent ADA@acme.test Ada Agent"))).to_be_visible()
    await olly.select_option(label="Ada Agent (ada@acme.test)")
    await page.get_by_label("Ada Agent writes as").select_option(label="Always as the authorizing user")
    await page.get_by_role("button", name="Save people").click()
    await expect(page.get_by_text("People saved.")).to_be_visible()
    await expect(page.get_by_label("Olly Outsider writes as").locator("option:checked")).to_have_text(
        "Ada Agent (ada@acme.test)"
    )
    assert (await s.store.identity_override(WS, h.olly["aadObjectId"])).agent_id == h.ada_agent["id"]
    assert (await s.store.identity_override(WS, h.ada["aadObjectId"])).agent_id is None

    await page.get_by_role("button", name="Check setup").click()
    await expect(page.get_by_text(re.compile("neetoChat API key: valid"))).to_be_visible()
    await expect(page.locator(".checks li.ok")).to_have_count(7)
    await page.screenshot(path=str(shots / "settings-people-check.png"), full_page=True)


async def test_routing_rules_in_the_browser(signin, page, shots):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    billing = h.ms.add_team(name="Billing", members=[h.adam, h.ada])
    await s.install(billing["id"])
    desk = add_channel(h, billing["id"], "Billing desk")
    await _sign_in(s, page)
    await page.get_by_role("button", name="Link this team").click()
    routing = page.locator("#routing")
    await expect(routing.get_by_text("No rules")).to_be_visible()

    await routing.get_by_label("a pre-chat answer").check()
    await routing.get_by_label("Pre-chat question").fill("Department")
    await routing.get_by_label("Pre-chat answer", exact=True).fill("Billing")
    await routing.get_by_label("Send it to the team").select_option(label="Billing")
    channel = routing.get_by_label("Channel for its notices")
    await channel.fill("Nowhere")
    await routing.get_by_role("button", name="Add rule").click()
    await expect(routing.get_by_text("rule 1: Nowhere is not a channel of that team")).to_be_visible()
    await expect(routing.get_by_label("Pre-chat question")).to_have_value("Department")  # kept
    assert (await s.workspace()).routes is None
    await channel.fill("billing desk")
    await routing.get_by_role("button", name="Add rule").click()
    await expect(page.get_by_text("Routing saved.")).to_be_visible()

    await routing.get_by_label("assigned to a neetoChat team").check()
    await routing.get_by_label("neetoChat team name").fill("Sales")
    await routing.get_by_label("Send it to the team").select_option(label="Support")
    await routing.get_by_role("button", name="Add rule").click()
    for row in ("Department = Billing Billing, notices in Billing desk",
                "neetoChat team Sales Support, notices in General"):
        await expect(routing.get_by_role("row", name=re.compile(row))).to_be_visible()
    box = await routing.bounding_box()  # in the viewport, scrolled to #routing
    assert box is not None
    top = box["y"] + await page.evaluate("window.scrollY")
    clip = {"x": box["x"] - 24, "y": top - 8, "width": box["width"] + 48, "height": box["height"] + 24}
    await page.screenshot(path=str(shots / "settings-routing.png"), full_page=True, clip=clip)  # the section only
    assert [r["notification_channel_id"] for r in (await s.workspace()).routes] == [desk, None]

    await routing.get_by_role("button", name="Move rule 2 up").click()
    await expect(routing.locator("tbody tr").first).to_contain_text("neetoChat team Sales")
    await routing.get_by_role("button", name="Remove rule 2").click()
    await expect(routing.locator("tbody tr")).to_have_count(1)
    assert [r["team_id"] for r in (await s.workspace()).routes] == [h.team_id]


async def test_bot_not_installed_page_in_the_browser(signin, page, shots):
    s = signin
    await s.connect_workspace()
    await _sign_in(s, page)
    await expect(page.get_by_text("app not installed yet")).to_be_visible()
    await page.get_by_role("button", name="Link this team").click()
    await expect(page.get_by_role("heading", name="Add the app to Support")).to_be_visible()
    await expect(page.get_by_role("button", name="Check again")).to_be_visible()
    await page.screenshot(path=str(shots / "not-installed.png"), full_page=True)
    await s.install()
    await page.get_by_role("button", name="Check again").click()
    await expect(page.get_by_label("Notification channel")).to_be_visible()
    assert (await s.workspace()).team_id == s.h.team_id


async def test_tampered_and_expired_links_show_a_403_page(signin, page, shots):
    s = signin
    await s.connect_workspace()
    expires = int(time.time()) + 600
    tampered = s.link(expires=expires).replace(f"expires={expires}", f"expires={expires + 3600}")
    response = await page.goto(tampered)
    assert response is not None and response.status == 403
    await expect(page.get_by_role("heading", name="That did not work")).to_be_visible()
    await expect(page.get_by_text(re.compile("signature is not valid"))).to_be_visible()
    await page.screenshot(path=str(shots / "link-refused.png"), full_page=True)

    response = await page.goto(s.link(expires=int(time.time()) - 1))
    assert response is not None and response.status == 403
    await expect(page.get_by_text(re.compile("expired"))).to_be_visible()
    assert not [r for r in s.identity.requests if "authorize" in r["path"]]
    ws = await s.workspace()
    assert ws.team_id is None and ws.authorizing_user is None
