"""The demo world: one neetoChat workspace and one Microsoft 365 team, and the steps that
connect them through the bridge exactly as an operator and a Teams admin would.

Shared by ``python -m sandbox`` (sandbox/demo.py) and the end-to-end tests
(tests/harness.py), so the world a newcomer watches is the world the tests check.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp

from sandbox.microsoft import MicrosoftSandbox
from sandbox.neetochat import NeetoChatSandbox

Json = dict[str, Any]

WORKSPACE = "acme"


class ConnectError(Exception):
    """A connection step was refused; the message says which step and the answer."""


async def admin_request(
    http: aiohttp.ClientSession, bridge_url: str, token: str | None, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One call to the bridge's operator API: (status, JSON body or None). ``token=None``
    sends no Authorization header (tests check the refusals)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, f"{bridge_url}{path}", json=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


@dataclass
class World:
    """Workspace "acme" with agents Adam Admin (admin) and Ada Agent; team "Support" with
    the Teams users Adam, Ada (both agents, matched by email) and Olly (not an agent)."""

    neeto: NeetoChatSandbox
    ms: MicrosoftSandbox
    neeto_url: str
    api_key: str
    webhook_secret: str
    admin_agent: Json
    ada_agent: Json
    adam: Json
    ada: Json
    olly: Json
    team: Json

    @property
    def team_id(self) -> str:
        return self.team["id"]

    def webhook_url(self, bridge_url: str) -> str:
        return f"{bridge_url}/api/neetochat/{WORKSPACE}/webhooks"

    async def connect(
        self,
        http: aiohttp.ClientSession,
        bridge_url: str,
        admin_token: str,
        *,
        update_type: str = "new_conversations",
        notification_channel_id: str | None = None,
    ) -> None:
        """Connect the workspace, install the app in the team (as Adam), link the team with
        Adam as the authorizing user, and point neetoChat's webhooks at the bridge."""
        connection = {
            "base_url": f"{self.neeto_url}/{WORKSPACE}",
            "api_key": self.api_key,
            "webhook_secret": self.webhook_secret,
        }
        status, body = await admin_request(
            http, bridge_url, admin_token, "PUT", f"/api/admin/workspaces/{WORKSPACE}", connection
        )
        if status not in (200, 201):
            raise ConnectError(f"connecting the workspace answered {status}: {body}")
        statuses = await self.ms.install_bot(self.team_id, by_user=self.adam)
        if not all(200 <= s < 300 for s in statuses):
            raise ConnectError(f"the bridge answered the app installation with {statuses}")
        link: Json = {
            "tenant_id": self.ms.tenant_id,
            "team_id": self.team_id,
            "update_type": update_type,
            "authorizing_user": {
                "aad_object_id": self.adam["aadObjectId"],
                "email": self.admin_agent["email"],
                "name": self.admin_agent["name"],
            },
        }
        if notification_channel_id:
            link["notification_channel_id"] = notification_channel_id
        status, body = await admin_request(
            http, bridge_url, admin_token, "PUT", f"/api/admin/workspaces/{WORKSPACE}/teams", link
        )
        if status != 200:
            raise ConnectError(f"linking the team answered {status}: {body}")
        self.neeto.set_webhook_url(WORKSPACE, self.webhook_url(bridge_url))


def build_world(
    neeto: NeetoChatSandbox,
    ms: MicrosoftSandbox,
    *,
    neeto_url: str,
    api_key: str | None = None,
    webhook_secret: str | None = None,
) -> World:
    """Create the people and places in both sandboxes (nothing is connected yet). Without
    ``api_key``/``webhook_secret`` fresh random ones are made, as a real workspace has."""
    api_key = api_key or f"nc-{secrets.token_urlsafe(24)}"
    webhook_secret = webhook_secret or f"whsec-{secrets.token_urlsafe(24)}"
    neeto.add_workspace(WORKSPACE, api_key=api_key, webhook_secret=webhook_secret, name="Acme Support")
    admin_agent = neeto.add_agent(WORKSPACE, name="Adam Admin", email="adam@acme.test", role="admin")
    ada_agent = neeto.add_agent(WORKSPACE, name="Ada Agent", email="ada@acme.test")
    adam = ms.add_user(name="Adam Admin", email="adam@acme.test")
    ada = ms.add_user(name="Ada Agent", email="ADA@acme.test")  # case differs on purpose: emails match anyway
    olly = ms.add_user(name="Olly Outsider", email="olly@partner.test")
    team = ms.add_team(name="Support", members=[adam, ada, olly])
    return World(
        neeto=neeto,
        ms=ms,
        neeto_url=neeto_url.rstrip("/"),
        api_key=api_key,
        webhook_secret=webhook_secret,
        admin_agent=admin_agent,
        ada_agent=ada_agent,
        adam=adam,
        ada=ada,
        olly=olly,
        team=team,
    )
