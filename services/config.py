"""Settings from the environment, under the names of the bridge's surface contract.

Bot Framework names (``MicrosoftAppId`` …) are kept as Microsoft's templates spell them so
that an Azure deployment's App Settings work unchanged. A ``.env`` file in the working
folder is read too (python-dotenv), without overriding variables already set.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

from dotenv import load_dotenv

from services.rate_limits import (
    GRAPH_CHANNEL_CREATE_LIMITS,
    TEAMS_TENANT_LIMITS,
    TEAMS_THREAD_LIMITS,
    Window,
    parse_windows,
)

# Hosts that only the real Microsoft cloud serves. Local mode sends no tokens, so it must
# never talk to them: an unauthenticated bot pointed at production would fail in confusing
# ways or, worse, half-work.
MICROSOFT_HOST_SUFFIXES = (
    "microsoft.com",
    "microsoftonline.com",
    "botframework.com",
    "trafficmanager.net",
    "azure.com",
    "azure.net",
    "office.com",
    "office365.com",
    "windows.net",
    "live.com",
)


class ConfigError(Exception):
    """Startup refused; the message is one line that says why."""


@dataclass(frozen=True)
class Settings:
    port: int = 3978
    public_url: str = "http://localhost:3978"
    mongodb_uri: str | None = None
    mongodb_db: str = "neetochat_teams"
    data_dir: str = "./data"
    app_id: str = ""
    app_password: str = ""
    app_type: str = "MultiTenant"
    app_tenant_id: str = ""
    graph_base_url: str = "https://graph.microsoft.com/v1.0"
    login_authority: str = "https://login.microsoftonline.com"
    teams_service_url: str = "https://smba.trafficmanager.net/teams/"
    admin_token: str | None = None
    secret_key: str | None = None
    instance: str = "bridge"
    # Teams' and Graph's published limits (services/rate_limits.py); overridable because
    # Microsoft changes them now and then ("7/1,8/2,60/30,1800/3600").
    teams_thread_limits: tuple[Window, ...] = TEAMS_THREAD_LIMITS
    teams_tenant_limits: tuple[Window, ...] = TEAMS_TENANT_LIMITS
    graph_channel_create_limits: tuple[Window, ...] = GRAPH_CHANNEL_CREATE_LIMITS
    # How long a claimed job stays an instance's without a heartbeat: how soon another
    # instance takes over the work of one that died.
    job_lease_seconds: float = 60.0
    # Conversations one instance works on at once (each conversation stays in order).
    delivery_concurrency: int = 16
    # Reconcile (services/reconcile.py): how often every open conversation is compared with
    # both sides (0: only at startup, after outages and reconnects, and on demand), and how
    # many conversations of a workspace one run takes at most (the rest in the next runs).
    reconcile_interval: float = 600.0
    reconcile_batch: int = 100
    # Messages younger than this are left to the live path (their webhook or activity may
    # be on its way); the next run takes them if they were lost.
    reconcile_grace: float = 60.0

    @property
    def local_mode(self) -> bool:
        """No Entra app configured: unauthenticated, as the Bot Framework Emulator expects."""
        return not self.app_id

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        if env is None:
            load_dotenv(override=False)
            env = dict(os.environ)
        port = int(env.get("PORT") or 3978)
        settings = cls(
            port=port,
            public_url=(env.get("PUBLIC_URL") or f"http://localhost:{port}").rstrip("/"),
            mongodb_uri=env.get("MONGODB_URI") or None,
            mongodb_db=env.get("MONGODB_DB") or "neetochat_teams",
            data_dir=env.get("DATA_DIR") or "./data",
            app_id=env.get("MicrosoftAppId", ""),
            app_password=env.get("MicrosoftAppPassword", ""),
            app_type=env.get("MicrosoftAppType") or "MultiTenant",
            app_tenant_id=env.get("MicrosoftAppTenantId", ""),
            graph_base_url=(env.get("GRAPH_BASE_URL") or cls.graph_base_url).rstrip("/"),
            login_authority=(env.get("LOGIN_AUTHORITY") or cls.login_authority).rstrip("/"),
            teams_service_url=env.get("TEAMS_SERVICE_URL") or cls.teams_service_url,
            admin_token=env.get("BRIDGE_ADMIN_TOKEN") or None,
            secret_key=env.get("SECRET_KEY") or None,
            instance=env.get("BRIDGE_INSTANCE") or socket.gethostname(),
            teams_thread_limits=_limits(env, "TEAMS_THREAD_LIMITS", TEAMS_THREAD_LIMITS),
            teams_tenant_limits=_limits(env, "TEAMS_TENANT_LIMITS", TEAMS_TENANT_LIMITS),
            graph_channel_create_limits=_limits(env, "GRAPH_CHANNEL_CREATE_LIMITS", GRAPH_CHANNEL_CREATE_LIMITS),
            job_lease_seconds=_positive(env, "JOB_LEASE_SECONDS", 60.0),
            delivery_concurrency=int(_positive(env, "DELIVERY_CONCURRENCY", 16)),
            reconcile_interval=_positive(env, "RECONCILE_INTERVAL_SECONDS", 600.0, zero_means_off=True),
            reconcile_batch=int(_positive(env, "RECONCILE_BATCH", 100)),
            reconcile_grace=_positive(env, "RECONCILE_GRACE_SECONDS", 60.0, zero_means_off=True),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.local_mode:
            for name, url in (
                ("GRAPH_BASE_URL", self.graph_base_url),
                ("TEAMS_SERVICE_URL", self.teams_service_url),
            ):
                if is_microsoft_host(url):
                    raise ConfigError(
                        f"local mode (MicrosoftAppId empty) sends no tokens, so {name}={url} "
                        "must not point at a Microsoft host; set MicrosoftAppId or point it "
                        "at a local stand-in"
                    )
        elif not self.secret_key:
            raise ConfigError(
                "SECRET_KEY is required when MicrosoftAppId is set (it encrypts stored secrets and signs cookies)"
            )


def _positive(env: dict[str, str], name: str, default: float, *, zero_means_off: bool = False) -> float:
    try:
        value = float(env.get(name) or default)
    except ValueError:
        raise ConfigError(f"{name} must be a number") from None
    if value < 0 or (value == 0 and not zero_means_off):
        raise ConfigError(f"{name} must be positive" + (" (or 0: off)" if zero_means_off else ""))
    return value


def _limits(env: dict[str, str], name: str, default: tuple[Window, ...]) -> tuple[Window, ...]:
    if name not in env:
        return default
    try:
        return parse_windows(env[name])
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def is_microsoft_host(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return any(host == s or host.endswith("." + s) for s in MICROSOFT_HOST_SUFFIXES)
