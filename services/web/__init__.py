"""The pages an admin's browser sees: "Login to Teams" sign-in, team picker, settings.

``setup_web(app, settings, runtime)`` adds them to the bridge's aiohttp app: an encrypted
session cookie (aiohttp-session ``EncryptedCookieStorage``, Fernet key derived from
``SECRET_KEY`` with HKDF, HttpOnly, SameSite=Lax, Secure when ``PUBLIC_URL`` is https),
server-rendered Jinja2 templates (``templates/``, autoescaped, no JavaScript needed) and
``static/style.css``. Routes and flow: ``services/web/pages.py``; the signed link format:
``services/web/links.py``.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_session import session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.config import Settings
from services.crypto import load_or_create_key
from services.web.pages import COOKIE_NAME, WEB, Pages

ROOT = Path(__file__).resolve().parent.parent.parent


def session_key(secret_key: str) -> str:
    """The session cookie's 32-byte Fernet key (url-safe base64): HKDF from ``SECRET_KEY`` like
    the stored-secrets key (services/crypto.py), with its own ``info`` so the two never coincide."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"neetochat-teams/v1", info=b"session-cookie").derive(
        secret_key.encode()
    )
    return base64.urlsafe_b64encode(derived).decode()


def setup_web(app: web.Application, settings: Settings, runtime: Callable[[Mapping[Any, Any]], Any]) -> None:
    """``runtime(request.config_dict)`` gives the running bridge's ``ctx`` (BridgeContext) and
    ``runner``."""
    storage = EncryptedCookieStorage(
        session_key(load_or_create_key(settings.secret_key, settings.data_dir)),
        cookie_name=COOKIE_NAME,
        path="/teams",
        httponly=True,
        samesite="Lax",
        secure=settings.public_url.lower().startswith("https://"),
        max_age=None,  # a browser-session cookie; the pages check their own ages
    )
    # aiohttp-session's middleware wraps each page's handler, not an application: a
    # middleware on any application, even a sub-application, makes aiohttp run its
    # middleware chain on every request of the server, every webhook and activity included
    # (about 1 % of a webhook flood's CPU).
    middleware = session_middleware(storage)

    def with_session(handler: Handler) -> Handler:
        """``handler`` run inside aiohttp-session's middleware: its session loaded, and saved
        into the answer's cookie when changed."""
        return functools.partial(middleware, handler=handler)

    pages_app = web.Application()
    aiohttp_jinja2.setup(pages_app, loader=jinja2.FileSystemLoader(str(ROOT / "templates")), autoescape=True)
    pages = Pages(settings, runtime)
    pages_app[WEB] = pages
    pages_app.add_routes(
        [
            web.route(method, path, with_session(handler))
            for method, path, handler in (
                ("GET", "/login", pages.login),
                ("GET", "/callback", pages.callback),
                ("GET", "/pick", pages.pick),
                ("POST", "/pick", pages.pick_team),
                ("POST", "/check", pages.check_again),
                ("GET", "/settings", pages.settings_page),
                ("POST", "/settings", pages.save_settings),
                ("POST", "/people", pages.save_identities),
                ("POST", "/routes", pages.edit_routes),
                ("POST", "/check-setup", pages.check_setup),
                ("POST", "/disconnect", pages.disconnect),
                ("GET", "/app-package", pages.app_package),
            )
        ]
    )
    pages_app.router.add_static("/static", str(ROOT / "static"))
    app.add_subapp("/teams", pages_app)


__all__ = ["setup_web", "session_key"]
