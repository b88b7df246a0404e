"""The signed "Login to Teams" link neetoChat opens: ``/teams/login?workspace=&expires=&signature=``.

``signature = hex(HMAC-SHA256(webhook_secret, f"{workspace}.{expires}"))`` with the
workspace's webhook secret (the one secret neetoChat and the bridge already share) and
``expires`` in unix seconds. Verification recomputes it in constant time, so a link made
for another workspace, with a changed expiry, or past its expiry is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode


class LinkRefused(Exception):
    """The link is not valid; the message says why (shown to the person)."""


def link_signature(webhook_secret: str, workspace: str, expires: int | str) -> str:
    return hmac.new(webhook_secret.encode(), f"{workspace}.{expires}".encode(), hashlib.sha256).hexdigest()


def sign_login_link(public_url: str, workspace: str, webhook_secret: str, expires: int) -> str:
    """The URL neetoChat's "Login to Teams" button opens (what neetoChat computes)."""
    signature = link_signature(webhook_secret, workspace, expires)
    query = urlencode({"workspace": workspace, "expires": str(expires), "signature": signature})
    return f"{public_url.rstrip('/')}/teams/login?{query}"


def verify_login_link(
    workspace: str, expires: str, signature: str, webhook_secret: str, *, now: float | None = None
) -> None:
    """Raise ``LinkRefused`` unless ``signature`` signs ``workspace.expires`` and it has not expired."""
    if not workspace or not expires or not signature:
        raise LinkRefused("The link is incomplete: it needs workspace, expires and signature.")
    if not expires.isascii() or not expires.isdigit():
        raise LinkRefused("The link is malformed (expires is not a number).")
    expires_at = int(expires)
    expected = link_signature(webhook_secret, workspace, expires)  # over the digits as sent
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise LinkRefused("The link's signature is not valid for this workspace. Open Teams from neetoChat again.")
    if expires_at < (time.time() if now is None else now):
        raise LinkRefused("The link has expired. Open Teams from neetoChat again to get a fresh one.")
