"""Small pure pieces whose mistakes users would see: channel names Teams would refuse,
commands taken for messages (or the reverse), text mangled on its way to the visitor,
a bridge that starts in local mode against Microsoft's cloud."""

from __future__ import annotations

import pytest
from botbuilder.schema import Activity, ConversationResourceResponse
from botframework.connector.auth import AuthenticationConstants, ClaimsIdentity

from cards.notices import message_html
from dialogs.commands import Command, parse_command
from services.channel_names import FORBIDDEN, MAX_LENGTH, channel_name
from services.config import ConfigError, Settings
from services.errors import RemoteError
from services.metrics import Metrics
from services.rate_limits import RateLimiter
from services.teams import TeamsPoster
from services.teams_text import html_to_text


@pytest.mark.parametrize(
    ("name", "email"),
    [
        ("Vera Jones", "vera@example.com"),
        ("Bob #1 & {friends} / 'quoted' \"double\" <tag> ? | ~ % * + : \\", None),
        ("_hidden.", None),
        (None, "only.an.email@example.com"),
        (None, None),
        ("x" * 200, None),
        ("Zoë 李 🎉", None),
        ("...", None),
    ],
)
def test_channel_names_are_valid_and_start_with_the_number(name, email):
    for attempt in range(3):
        result = channel_name(1042, name, email, attempt)
        assert result.split(" ")[0] == "1042"
        assert len(result) <= MAX_LENGTH
        assert not (set(result) & FORBIDDEN)
        assert not result.startswith(("_", ".")) and not result.endswith(".")


def test_channel_name_alternatives_differ():
    names = {channel_name(7, "Vera Jones", None, attempt) for attempt in range(5)}
    assert len(names) == 5
    assert channel_name(7, "Vera Jones", None) == "7 Vera Jones"


@pytest.mark.parametrize("text", ["/close", "/CLOSE", "  /close  ", "/Close\n"])
def test_close_command_variants(text):
    command = parse_command(text)
    assert command is not None and command.name == "close"


@pytest.mark.parametrize("text", ["please /close this", "close", "", "a/close", "/ close"])
def test_text_that_is_a_message_not_a_command(text):
    assert parse_command(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("/closed", "/closed is not a command"),
        ("/unknownthing now", "/unknownthing is not a command"),
        ("/close now please", "/close takes nothing after it"),
        ("/assign", "use /assign me, /assign @person or /assign team <name>"),
        ("/assign  Team ", "use /assign me, /assign @person or /assign team <name>"),
        ("/help me", "/help takes nothing after it"),
    ],
)
def test_unknown_or_misused_commands_get_the_help_not_the_visitor(text, problem):
    assert parse_command(text) == Command("help", "", problem)


@pytest.mark.parametrize(
    ("text", "args"),
    [("/assign me", "me"), ("/assign Ada Agent", "Ada Agent"), ("/ASSIGN team  Billing ", "team  Billing")],
)
def test_assign_takes_me_a_person_or_a_team(text, args):
    assert parse_command(text) == Command("assign", args)


@pytest.mark.parametrize(("text", "name"), [("/help", "help"), ("/Assign ME", "assign"), ("/unassign ", "unassign")])
def test_commands_without_text(text, name):
    command = parse_command(text)
    assert command is not None and command.name == name and command.problem is None


@pytest.mark.parametrize(
    ("text", "args"),
    [("/note VIP customer", "VIP customer"), ("  /NOTE  two\nlines  ", "two\nlines"), ("/note", "")],
)
def test_note_command_keeps_its_text(text, args):
    assert parse_command(text) == Command("note", args)


@pytest.mark.parametrize("text", ["please /note this", "note: call back"])
def test_text_that_is_not_the_note_command(text):
    assert parse_command(text) is None


def test_teams_html_becomes_plain_text():
    markup = (
        "<p>Hello <b>there</b>&nbsp;&amp; welcome</p><p>Line two<br>Line three</p>"
        '<p>See <a href="https://example.com/x">the docs</a> <emoji alt="😀" id="smile"></emoji></p>'
    )
    assert html_to_text(markup) == (
        "Hello there & welcome\nLine two\nLine three\nSee the docs (https://example.com/x) 😀"
    )


def test_visitor_text_cannot_format_or_inject_into_teams():
    message = {
        "id": "m1",
        "sender": {"type": "visitor", "name": "<b>Eve</b>"},
        "body": "**bold** <script>alert(1)</script>\nsecond line https://example.com/a?b=1&c=2.",
        "attachments": [
            {
                "filename": "a<b>.pdf",
                "url": "https://files.example/a.pdf",
                "content_type": "application/pdf",
                "size": 2048,
            }
        ],
        "created_at": "2026-11-28T15:31:46.123Z",
    }
    out = message_html(message)
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "&lt;b&gt;Eve&lt;/b&gt;" in out
    assert "**bold**" in out  # sent as HTML text, Markdown is not interpreted
    assert '<a href="https://example.com/a?b=1&amp;c=2">' in out
    assert "<br>second line" in out
    assert '<a href="https://files.example/a.pdf">a&lt;b&gt;.pdf</a> (application/pdf, 2.0 KB)' in out


def test_local_mode_refuses_microsoft_hosts():
    with pytest.raises(ConfigError, match="GRAPH_BASE_URL"):
        Settings.from_env({"TEAMS_SERVICE_URL": "http://127.0.0.1:9/"})
    with pytest.raises(ConfigError, match="TEAMS_SERVICE_URL"):
        Settings.from_env({"GRAPH_BASE_URL": "http://127.0.0.1:9/v1.0"})
    ok = Settings.from_env({"GRAPH_BASE_URL": "http://127.0.0.1:9/v1.0", "TEAMS_SERVICE_URL": "http://127.0.0.1:9/"})
    assert ok.local_mode


def test_authenticated_mode_requires_secret_key():
    env = {"MicrosoftAppId": "11111111-2222-3333-4444-555555555555", "MicrosoftAppPassword": "x"}
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        Settings.from_env(env)
    assert not Settings.from_env({**env, "SECRET_KEY": "k" * 32}).local_mode


def test_a_thread_reference_is_botbuilders_and_a_new_dict_each_time():
    """The kept serialization (services/teams.py) is botbuilder's (its field names), and what
    one caller does to its reference never reaches the next."""
    poster = TeamsPoster(None, "bot-app", None, None, thread_limits=(), tenant_limits=())  # type: ignore[arg-type]
    args = ("https://smba.example/amer/", "tenant-1", "19:chan@thread.tacv2", "1700000000000")
    first = poster.thread_reference(*args)
    assert first == {
        "activityId": "1700000000000",
        "bot": {"id": "28:bot-app"},
        "conversation": {
            "isGroup": True,
            "conversationType": "channel",
            "id": "19:chan@thread.tacv2;messageid=1700000000000",
            "tenantID": "tenant-1",  # botbuilder's spelling for ConversationAccount.tenant_id
        },
        "channelId": "msteams",
        "serviceUrl": "https://smba.example/amer/",
    }
    first["conversation"]["id"] = "changed"
    assert poster.thread_reference(*args)["conversation"]["id"] == "19:chan@thread.tacv2;messageid=1700000000000"
    other = poster.thread_reference(args[0], args[1], args[2], "1700000000001")
    assert other["conversation"]["id"].endswith(";messageid=1700000000001")


class _Connector:
    """A Bot Connector client whose create_conversation answers ``answer``."""

    def __init__(self, answer: ConversationResourceResponse) -> None:
        self.conversations = self
        self.answer = answer
        self.sent: list = []

    async def create_conversation(self, params):
        self.sent.append(params)
        return self.answer


class _Adapter:
    """What TeamsPoster asks of botbuilder's CloudAdapter to get the connector client."""

    def __init__(self, connector: _Connector) -> None:
        self.bot_framework_authentication = self
        self.connector = connector
        self.service_urls: list[str] = []

    def create_claims_identity(self, app_id: str) -> ClaimsIdentity:
        return ClaimsIdentity({AuthenticationConstants.AUDIENCE_CLAIM: app_id}, True)

    def create_connector_factory(self, claims):
        self.service_urls.append(claims.claims[AuthenticationConstants.SERVICE_URL_CLAIM])
        return self

    async def create(self, service_url: str, audience):
        return self.connector


@pytest.mark.parametrize(
    ("answer", "posted"),
    [
        (ConversationResourceResponse(id="19:chan@thread.tacv2;messageid=42", activity_id="42"), "42"),
        (ConversationResourceResponse(id="19:chan@thread.tacv2;messageid=43"), "43"),  # no activityId
        (ConversationResourceResponse(id="19:chan@thread.tacv2"), None),  # neither: which post is it?
    ],
)
async def test_a_root_post_gives_the_id_teams_answered(answer, posted):
    """A channel post goes through the bot's connector client for the service URL, with the
    channel and tenant in channelData; its id is Teams' activityId, or the thread's in the
    conversation id; an answer with neither fails the attempt (the rerun asks Graph)."""
    connector = _Connector(answer)
    adapter = _Adapter(connector)
    poster = TeamsPoster(adapter, "bot-app", RateLimiter(), Metrics(), thread_limits=(), tenant_limits=())  # type: ignore[arg-type]
    post = poster.post_to_channel(
        service_url="https://smba.example/amer/",
        tenant_id="tenant-1",
        channel_id="19:chan@thread.tacv2",
        activity=Activity(type="message", text="hello"),
    )
    if posted is None:
        with pytest.raises(RemoteError):
            await post
    else:
        assert await post == posted
    [params] = connector.sent
    assert adapter.service_urls == ["https://smba.example/amer/"]
    assert params.channel_data.channel.id == "19:chan@thread.tacv2" and params.tenant_id == "tenant-1"
    assert params.bot.id == "28:bot-app" and params.activity.text == "hello"
