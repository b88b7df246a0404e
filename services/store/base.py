"""The store's contract: what the bridge keeps, and the operations on it.

Two implementations honour this contract (``sqlite.py`` for the embedded default under
``DATA_DIR``, ``mongo.py`` for MongoDB through motor) and one set of contract tests
(``tests/test_store_contract.py``) runs against both. Deduplication is done by unique
indexes, never by read-then-write, so that a retried webhook, a redelivered activity or a
second bridge process can never create a second row.

Shapes (mautrix-style): a *workspace* is a connected neetoChat workspace; an
*installation* is a Teams team the bot was added to; a *portal* is one neetoChat
conversation and the Teams channel that mirrors it; a *message link* maps one neetoChat
message id to one Teams activity id; a *job* is one unit of durable work (an inbound
event, or a message written in Teams) processed in order per conversation; an *identity
override* says who one Teams user is in neetoChat when their emails differ.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any


@dataclass
class Workspace:
    """A connected neetoChat workspace. Secrets are stored encrypted (``*_enc``)."""

    id: str  # the workspace subdomain, as in webhook paths and events
    base_url: str
    api_key_enc: str
    webhook_secret_enc: str
    name: str = ""
    app_url: str = ""
    # Teams link (None until PUT .../teams or the sign-in flow links a team)
    tenant_id: str | None = None
    team_id: str | None = None  # Teams thread id, 19:…@thread.tacv2
    aad_group_id: str | None = None  # what Graph calls the team id
    notification_channel_id: str | None = None
    update_type: str = "new_conversations"  # or "all_activity"
    authorizing_user: dict[str, Any] | None = None  # aad_object_id, email, name
    # Post a conversation's transcript in the notification channel before its channel is
    # deleted on close, and open the channel of a reopened conversation with it.
    transcript_on_close: bool = True
    # Routing rules, first match wins (services/routing.py): [{"when": {...}, "team_id",
    # "notification_channel_id"}]; None or empty: every conversation goes to ``team_id``.
    routes: list[dict[str, Any]] | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass
class Installation:
    """A team the bot is installed in, as learned from installation activities."""

    team_id: str  # 19:…@thread.tacv2
    aad_group_id: str | None
    tenant_id: str | None
    service_url: str
    general_channel_id: str
    name: str = ""
    installed: bool = True
    updated_at: float = 0.0


@dataclass
class Portal:
    """One neetoChat conversation and its Teams channel.

    ``state`` moves ``pending`` → ``open`` (channel exists) → ``closed`` (channel deleted).
    ``channel_id`` is set as soon as Graph returns it, before anything is posted, so a
    crash after creation never creates a second channel.
    """

    workspace_id: str
    conversation_id: str
    number: int
    state: str = "pending"
    team_id: str | None = None
    channel_id: str | None = None
    channel_name: str | None = None
    channel_url: str | None = None
    conversation_reference: dict[str, Any] | None = None  # botbuilder ConversationReference
    notice_activity_id: str | None = None  # the card in the notification channel
    intro_activity_id: str | None = None  # the card that opens the conversation channel
    first_message: str | None = None  # shown on the cards; kept so live updates need no lookup
    # Set when the team is at Teams' channel cap: the conversation then lives as a thread
    # in the notification channel (``channel_id``), started by this root post.
    thread_id: str | None = None
    backfilled: bool = False
    # Closed and opened again: the channel it gets next starts with the transcript so far.
    reopened: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass
class MessageLink:
    """One neetoChat message ↔ one Teams activity.

    Written with ``teams_activity_id=None`` *before* a post to Teams (the intent) and
    completed after it, so recovery can tell "never posted" from "posted, not recorded".
    """

    workspace_id: str
    conversation_id: str
    neeto_message_id: str | None
    teams_activity_id: str | None
    direction: str  # "to_teams" or "to_neetochat"
    created_at: float = 0.0
    channel_id: str | None = None  # where the Teams activity is: its links go when the channel does


@dataclass
class Job:
    """Durable work. ``partition`` (workspace + conversation) is processed strictly in
    ``seq`` order: a job is claimable only when it is its partition's oldest unfinished one.
    """

    seq: int
    kind: str  # "neetochat_event" | "teams_message" | "teams_close"
    workspace_id: str
    partition: str
    dedupe_key: str
    payload: dict[str, Any]
    status: str = "pending"  # pending | done | dead
    attempts: int = 0
    next_attempt_at: float = 0.0
    lease_owner: str | None = None
    lease_until: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None


@dataclass
class JobCounts:
    """The jobs an operator watches: waiting (``pending``) and failed for good (``dead``).
    Done jobs are not counted: they pile up for good (the dedupe history), so counting them
    would cost more with every job ever run; ``bridge_jobs_total`` counts them as they finish."""

    pending: int = 0
    dead: int = 0
    oldest_pending_at: float | None = None


@dataclass
class IdentityOverride:
    """Who one Teams user writes as in neetoChat, set on the settings page or through the
    operator API (for people whose Teams and neetoChat emails differ); wins over the email
    match. Unique per (workspace, Teams user)."""

    workspace_id: str
    aad_object_id: str  # the Teams user's Entra (AAD) object id, lower case
    agent_id: str | None  # a neetoChat agent; None: always as the authorizing user
    teams_name: str = ""  # as the team's roster had them when set (shown once they left the team)
    teams_email: str = ""
    updated_at: float = 0.0


class Store(abc.ABC):
    """Async persistence. Every method is safe to call concurrently from one event loop;
    claim/lease methods are also safe across processes sharing one database."""

    # lifecycle -----------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending numbered migrations (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the database is unreachable (used by /readyz)."""

    # workspaces ----------------------------------------------------------------------
    @abc.abstractmethod
    async def put_workspace(self, ws: Workspace) -> None:
        """Insert or replace the whole record (keyed by ``ws.id``)."""

    @abc.abstractmethod
    async def get_workspace(self, workspace_id: str) -> Workspace | None: ...

    @abc.abstractmethod
    async def workspaces_linked_to(self, team_ids: list[str]) -> list[Workspace]:
        """Workspaces whose team is one of ``team_ids`` (a team's thread id and group id)."""

    @abc.abstractmethod
    async def linked_workspaces(self) -> list[Workspace]:
        """Every workspace linked to a team (what reconcile walks)."""

    @abc.abstractmethod
    async def delete_workspace(self, workspace_id: str) -> bool:
        """Remove the workspace, its portals, links, identity overrides and unfinished jobs. True
        if it existed."""

    # installations -------------------------------------------------------------------
    @abc.abstractmethod
    async def put_installation(self, inst: Installation) -> None:
        """Insert or replace (keyed by ``inst.team_id``)."""

    @abc.abstractmethod
    async def get_installation(self, team_id_or_group_id: str) -> Installation | None:
        """Find by Teams thread id or by AAD group id."""

    @abc.abstractmethod
    async def installations(self, tenant_id: str) -> list[Installation]:
        """The teams of one tenant the bot is installed in now (not those it was removed
        from), by name in any case: what the settings page offers as routing targets."""

    # portals -------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_portal(self, portal: Portal) -> bool:
        """Insert if (workspace, conversation) is new. False if it already existed."""

    @abc.abstractmethod
    async def get_portal(self, workspace_id: str, conversation_id: str) -> Portal | None: ...

    @abc.abstractmethod
    async def get_portal_by_channel(self, channel_id: str, thread_id: str | None = None) -> Portal | None:
        """The open portal of a Teams message: the one living as thread ``thread_id`` of
        the channel if there is one, else the one that owns the whole channel."""

    @abc.abstractmethod
    async def update_portal(self, workspace_id: str, conversation_id: str, **fields: Any) -> None: ...

    @abc.abstractmethod
    async def count_portals(self, workspace_id: str, state: str | None = None) -> int: ...

    @abc.abstractmethod
    async def open_portals(self, workspace_id: str, after: str | None, limit: int) -> list[Portal]:
        """Open portals in conversation id order, those after ``after``: a walk over all
        of them in bounded steps."""

    @abc.abstractmethod
    async def open_channels_by_team(self) -> dict[str, int]:
        """Open conversation channels per team (not threads): how close each is to the cap.
        Costs what is open, not the closed portals."""

    # neetoChat teams ------------------------------------------------------------------
    # The contract has no "list teams" call, so the bridge learns each team's id and name
    # from the events that carry them (a conversation assigned to a team), for
    # ``/assign team <name>``.
    @abc.abstractmethod
    async def remember_neeto_team(self, workspace_id: str, team_id: str, name: str) -> None:
        """Insert or rename (a renamed team keeps its id)."""

    @abc.abstractmethod
    async def neeto_teams(self, workspace_id: str) -> dict[str, str]:
        """Every team seen in the workspace: id → name."""

    # identity overrides -----------------------------------------------------------------
    @abc.abstractmethod
    async def set_identity_override(
        self, workspace_id: str, aad_object_id: str, agent_id: str | None, teams_name: str = "", teams_email: str = ""
    ) -> None:
        """Insert or replace one Teams user's override (``agent_id`` None: always as the
        authorizing user)."""

    @abc.abstractmethod
    async def delete_identity_override(self, workspace_id: str, aad_object_id: str) -> bool:
        """Back to the email match. True if there was an override."""

    @abc.abstractmethod
    async def identity_override(self, workspace_id: str, aad_object_id: str) -> IdentityOverride | None:
        """One indexed read: asked for every message written in Teams."""

    @abc.abstractmethod
    async def identity_overrides(self, workspace_id: str) -> list[IdentityOverride]:
        """Every override of the workspace, by Teams name."""

    # message links -------------------------------------------------------------------
    @abc.abstractmethod
    async def add_message_link(self, link: MessageLink) -> bool:
        """Insert; False when the neetoChat id or the Teams activity id is already linked
        (unique indexes on (workspace, neeto_message_id) and (workspace, teams_activity_id),
        each ignoring None)."""

    @abc.abstractmethod
    async def get_link_by_neeto_id(self, workspace_id: str, neeto_message_id: str) -> MessageLink | None: ...

    @abc.abstractmethod
    async def get_link_by_activity_id(self, workspace_id: str, teams_activity_id: str) -> MessageLink | None: ...

    @abc.abstractmethod
    async def complete_message_link(
        self,
        workspace_id: str,
        *,
        neeto_message_id: str | None = None,
        teams_activity_id: str | None = None,
    ) -> None:
        """Fill in the missing side of a link found by the side that is given.

        ``to_teams`` links are found by neeto id and get the activity id; ``to_neetochat``
        links are found by activity id and get the neeto id.
        """

    @abc.abstractmethod
    async def drop_intent(self, workspace_id: str, neeto_message_id: str) -> bool:
        """Remove a ``to_teams`` intent that has no activity id: the post is known not to
        have gone out (our own shaping held it back), so a rerun need not look for it."""

    @abc.abstractmethod
    async def forget_channel_links(self, workspace_id: str, conversation_id: str, channel_id: str) -> int:
        """Drop the conversation's links to activities in ``channel_id`` (a channel someone
        deleted: its posts are gone, and the new channel's backfill posts them again)."""

    # jobs ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, job: Job) -> bool:
        """Insert a pending job (``seq`` is assigned by the store). False, and nothing
        written, if ``dedupe_key`` was seen before (in any status)."""

    @abc.abstractmethod
    async def claim_jobs(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[Job]:
        """Lease up to ``limit`` due jobs, each the oldest unfinished job of its partition,
        at most one per partition, none whose partition is leased by someone else."""

    @abc.abstractmethod
    async def finish_job(self, seq: int, owner: str, status: str, error: str | None = None) -> bool:
        """Mark done/dead if ``owner`` still holds the lease (fencing). False otherwise."""

    @abc.abstractmethod
    async def retry_job(
        self, seq: int, owner: str, next_attempt_at: float, error: str, *, count_attempt: bool = True
    ) -> bool:
        """Release the lease, reschedule, bump attempts unless ``count_attempt`` is False
        (throttling: nothing failed, the job only waits its turn). False if the lease was lost."""

    @abc.abstractmethod
    async def renew_leases(self, owner: str, seqs: list[int], lease_until: float) -> list[int]:
        """Extend the leases ``owner`` still holds on ``seqs``: the heartbeat that keeps a
        long job (a big backfill under throttling) from being taken over while it runs.
        Returns the seqs still held; the others were lost (taken over after expiry)."""

    @abc.abstractmethod
    async def lease_held(self, seq: int, owner: str, now: float) -> bool:
        """Whether ``owner`` still holds an unexpired lease on job ``seq``: checked right
        before every post to Teams, so an owner that stalled past its lease (and whose job
        another instance took over) does not post as well."""

    @abc.abstractmethod
    async def release_leases(self, owner_prefix: str) -> int:
        """Free the pending jobs leased by owners whose name starts with ``owner_prefix``.

        A bridge instance calls this at startup with its own instance name: whatever an
        earlier run of the same instance held died with it, so a restart after ``kill -9``
        resumes at once instead of waiting for the leases to expire.
        """

    @abc.abstractmethod
    async def beat_instance(self, owner: str, now: float) -> None:
        """Record that bridge instance ``owner`` is alive (its heartbeat)."""

    @abc.abstractmethod
    async def live_instances(self, since: float) -> int:
        """How many instances beat since ``since``: they share Teams' rate limits."""

    @abc.abstractmethod
    async def job_counts(self, workspace_id: str | None = None) -> JobCounts:
        """Pending and dead jobs of the workspace (of all when None) and the oldest pending
        one's ``created_at``, at a cost that follows those jobs, not the done ones."""

    @abc.abstractmethod
    async def list_dead_jobs(self, workspace_id: str, limit: int = 100) -> list[Job]: ...

    @abc.abstractmethod
    async def requeue_dead_jobs(
        self, workspace_id: str, seqs: list[int] | None = None, error_prefix: str | None = None
    ) -> int:
        """Make dead jobs pending again (all of the workspace's, or those in ``seqs``, or
        those whose error starts with ``error_prefix``), with their attempts reset: the
        operator fixed the cause and replays them, or the bridge does when the cause went
        away (the bot was added back to the team). Their last error is kept until they run.
        Returns how many were requeued."""
