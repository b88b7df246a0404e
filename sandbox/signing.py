"""neetoChat's webhook signature, shared by the sandbox (which signs) and tests (which
craft or check webhooks), so both sides agree byte for byte with the contract."""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``"sha256=" + hex(HMAC-SHA256(secret, f"{timestamp}.{raw body}"))``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()
