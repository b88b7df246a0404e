"""Encryption of stored secrets (neetoChat API keys, webhook secrets).

Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) with a key derived by HKDF from
``SECRET_KEY``, so an operator can use any long random string. In local mode without
``SECRET_KEY`` a random key is generated once and kept in ``DATA_DIR/secret.key`` (mode
0600): secrets are still never stored in clear, and the README says to set ``SECRET_KEY``
for real deployments (authenticated mode refuses to start without it).
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SecretBox", "InvalidToken", "load_or_create_key"]


class SecretBox:
    """Encrypts and decrypts short secrets for storage."""

    def __init__(self, secret_key: str) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"neetochat-teams/v1", info=b"stored-secrets").derive(
            secret_key.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        return self._fernet.decrypt(token.encode()).decode()


def load_or_create_key(secret_key: str | None, data_dir: str) -> str:
    """``SECRET_KEY`` if set, else the key kept under ``data_dir`` (created on first use)."""
    if secret_key:
        return secret_key
    path = Path(data_dir) / "secret.key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key
