"""Build the Teams app package: ``python -m manifest.build [--out build/appPackage.zip]``.

The manifest is built as a Python dict rather than filled into a JSON template: the app id
and the host appear in five places, the commands and RSC permissions are Python lists that
tests compare against, and a dict cannot leave a ``{{placeholder}}`` behind or produce
invalid JSON. Ids are never hand-edited; they come from the environment:

* ``MicrosoftAppId``: the bot's Microsoft Entra app id (a GUID); becomes the app ``id``,
  ``bots[0].botId`` and ``webApplicationInfo.id``.
* ``PUBLIC_URL``: the bridge's public https base URL; its host becomes ``validDomains``.

A ``.env`` file in (or above) the working folder is read too, without overriding variables
already set. There is deliberately no ``--allow-http``: Azure Bot only accepts an https
messaging endpoint, so a package for an http URL could never work; for local experiments
put the bridge behind an https tunnel and use the tunnel's URL.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values, find_dotenv

from dialogs.commands import KNOWN  # the parser's list is the one list of commands
from manifest.icons import ACCENT_COLOR

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DEFAULT_OUT = REPO_ROOT / "build" / "appPackage.zip"

# The newest numbered Teams manifest schema shipped by the pinned @microsoft/app-manifest
# npm package (node_modules/@microsoft/app-manifest/build/json-schemas/teams/v1.30/).
MANIFEST_VERSION = "1.30"
SCHEMA_URL = f"https://developer.microsoft.com/json-schemas/teams/v{MANIFEST_VERSION}/MicrosoftTeams.schema.json"
APP_VERSION = "1.0.0"

# Every command the bot understands in a conversation channel. Add new ones here (and to
# dialogs/commands.py, which parses them; tests/test_manifest.py checks the two agree).
BOT_COMMANDS: list[dict[str, str]] = [
    {"title": f"/{name}", "description": description} for name, description in KNOWN.items()
]

# Resource-specific consent (RSC) permissions, all application permissions granted per team
# when the app is installed there. README.md says why each one is needed.
RSC_PERMISSIONS: list[str] = [
    "ChannelMessage.Read.Group",  # receive every channel message, not only @mentions
    "Channel.Create.Group",  # one channel per neetoChat conversation
    "Channel.Delete.Group",  # delete it when the conversation closes
    "ChannelSettings.Read.Group",  # list channel names and ids
    "TeamMember.Read.Group",  # the roster: map Teams users to neetoChat agents by email
]

SHORT_DESCRIPTION = "Answer neetoChat website chats from Teams: one channel per conversation."
FULL_DESCRIPTION = (
    "neetoChat for Microsoft Teams brings the conversations that visitors start in the neetoChat "
    "widget on your website into a team in Microsoft Teams. Each conversation gets its own channel, "
    "where the visitor's messages appear as they arrive. Agents reply by "
    "posting in that channel and the bot relays the reply to the visitor in neetoChat. Conversations "
    "can be assigned to an agent from Teams, and typing /close in a conversation's channel closes the "
    "conversation in neetoChat and deletes the channel.\n\n"
    "When the app is installed in a team, the bot is granted permission for that team only to read "
    "its channel messages, create and delete channels, read channel names and read the team's "
    "members (to match Teams users with neetoChat agents by email). It reads and changes nothing "
    "in other teams."
)

_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)  # fixed, so the same inputs give a byte-identical package


class BuildError(Exception):
    """The package cannot be built; the message is one line that says why."""


def check_app_id(app_id: str) -> str:
    app_id = app_id.strip()
    if not app_id:
        raise BuildError("MicrosoftAppId is empty: set it to the bot's Microsoft Entra app id (a GUID)")
    if not _GUID.match(app_id):
        raise BuildError(f"MicrosoftAppId {app_id!r} is not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return app_id.lower()


def check_public_url(public_url: str) -> tuple[str, str]:
    """``(base_url, host)`` for an https PUBLIC_URL, else BuildError."""
    public_url = public_url.strip()
    if not public_url:
        raise BuildError(
            "PUBLIC_URL is empty: set it to the bridge's public https URL, e.g. https://bridge.example.com"
        )
    parts = urlsplit(public_url)
    if parts.scheme.lower() != "https":
        raise BuildError(f"PUBLIC_URL {public_url!r} is not https: Teams and Azure Bot require an https endpoint")
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise BuildError(f"PUBLIC_URL {public_url!r} must be a plain https://host[/path] URL")
    return public_url.rstrip("/"), parts.hostname.lower()


def build_manifest(app_id: str, public_url: str) -> dict[str, Any]:
    app_id = check_app_id(app_id)
    base, host = check_public_url(public_url)
    return {
        "$schema": SCHEMA_URL,
        "manifestVersion": MANIFEST_VERSION,
        "version": APP_VERSION,
        "id": app_id,
        "developer": {
            "name": "neetoChat for Microsoft Teams",
            "websiteUrl": base,
            "privacyUrl": f"{base}/privacy",
            "termsOfUseUrl": f"{base}/terms",
        },
        "name": {"short": "neetoChat", "full": "neetoChat for Microsoft Teams"},
        "description": {"short": SHORT_DESCRIPTION, "full": FULL_DESCRIPTION},
        "icons": {"color": "color.png", "outline": "outline.png"},
        "accentColor": ACCENT_COLOR,
        "bots": [
            {
                "botId": app_id,
                "scopes": ["team"],
                "supportsFiles": False,
                "isNotificationOnly": False,
                "commandLists": [{"scopes": ["team"], "commands": [dict(c) for c in BOT_COMMANDS]}],
            }
        ],
        "permissions": ["identity", "messageTeamMembers"],
        "validDomains": [host],
        "webApplicationInfo": {"id": app_id, "resource": f"api://{host}/{app_id}"},
        "authorization": {
            "permissions": {
                "resourceSpecific": [{"name": name, "type": "Application"} for name in RSC_PERMISSIONS],
            }
        },
    }


def package_bytes(manifest: Mapping[str, Any], icons_dir: Path = HERE) -> bytes:
    """The app package: manifest.json, color.png and outline.png at the zip's root."""
    files = {
        "manifest.json": (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode(),
        "color.png": (icons_dir / "color.png").read_bytes(),
        "outline.png": (icons_dir / "outline.png").read_bytes(),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def read_settings(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(MicrosoftAppId, PUBLIC_URL)`` from ``environ`` (default: os.environ over ./.env)."""
    if environ is None:
        dotenv_path = find_dotenv(usecwd=True)
        file_values = {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None} if dotenv_path else {}
        environ = {**file_values, **os.environ}
    return environ.get("MicrosoftAppId", ""), environ.get("PUBLIC_URL", "")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manifest.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"zip to write (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    app_id, public_url = read_settings(environ)
    try:
        data = package_bytes(build_manifest(app_id, public_url))
    except BuildError as exc:
        print(f"manifest.build: error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
