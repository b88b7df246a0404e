"""Identifiers and activity payloads shaped like the ones Microsoft Teams produces.

The sandbox's "Teams client" sends these to the bot, so they must carry exactly the fields a
Teams bot relies on (``channelData.team``, ``conversation.id`` with ``;messageid=``, mention
entities, ...) and no friendlier ones: a bot that works against these should work against Teams.
The builders are plain functions of plain dicts so tests can also use them directly.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

CHANNEL_ID_TEAMS = "msteams"


def new_thread_id() -> str:
    """A team or channel id as Teams writes it: ``19:<32 hex>@thread.tacv2``."""
    return f"19:{uuid.uuid4().hex}@thread.tacv2"


def new_user_id() -> str:
    """A Teams (Bot Framework) user id; real ones are ``29:1`` plus an opaque token."""
    return "29:1" + secrets.token_urlsafe(42)


def iso_time(seconds: float) -> str:
    """UTC ISO-8601 with milliseconds and ``Z``, as Graph and the connector write times."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def user_account(user: dict[str, Any]) -> dict[str, Any]:
    """``from`` of an activity sent by a user (Teams adds the AAD object id)."""
    return {"id": user["id"], "name": user["name"], "aadObjectId": user["aadObjectId"]}


def bot_account(bot_id: str, bot_name: str) -> dict[str, Any]:
    return {"id": bot_id, "name": bot_name}


def client_info_entity(locale: str = "en-US", timezone_name: str = "Europe/London") -> dict[str, Any]:
    return {
        "type": "clientInfo", "locale": locale, "country": locale.split("-")[-1],
        "platform": "Web", "timezone": timezone_name,
    }


def mention_entity(bot_id: str, bot_name: str) -> dict[str, Any]:
    return {"type": "mention", "mentioned": {"id": bot_id, "name": bot_name}, "text": f"<at>{bot_name}</at>"}


def _team_ref(team: dict[str, Any]) -> dict[str, Any]:
    """``channelData.team`` of conversation and installation events (with the group id)."""
    return {"id": team["id"], "name": team["name"], "aadGroupId": team["aadGroupId"]}


def _base_activity(
    kind: str, *, activity_id: str, when: float, service_url: str, sender: dict[str, Any],
    bot: dict[str, Any], conversation: dict[str, Any], channel_data: dict[str, Any],
) -> dict[str, Any]:
    return {
        "type": kind,
        "id": activity_id,
        "timestamp": iso_time(when),
        "localTimestamp": iso_time(when),
        "serviceUrl": service_url,
        "channelId": CHANNEL_ID_TEAMS,
        "from": sender,
        "conversation": conversation,
        "recipient": bot,
        "entities": [client_info_entity()],
        "channelData": channel_data,
        "locale": "en-US",
        "localTimezone": "Europe/London",
    }


def _channel_conversation(conversation_id: str, tenant_id: str) -> dict[str, Any]:
    return {
        "isGroup": True, "conversationType": "channel", "tenantId": tenant_id, "id": conversation_id,
    }


def channel_message_activity(
    *, activity_id: str, when: float, service_url: str, tenant_id: str, team: dict[str, Any],
    channel_id: str, root_id: str, user: dict[str, Any], bot: dict[str, Any], text_html: str,
    mention_bot: bool = False, attachments: list[dict[str, Any]] | None = None,
    entities: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A user's channel post (root or reply) as Teams delivers it to a bot.

    The conversation id names the thread (``<channel>;messageid=<root>``); ``channelData.team``
    carries only the team id here (no name, no group id), unlike conversation updates.
    ``attachments`` (files, inline images) follow the ``text/html`` one; ``entities`` (e.g.
    mentions of people) follow ``clientInfo``.
    """
    mention = f"<at>{bot['name']}</at> " if mention_bot else ""
    html_mention = f'<at id="0">{bot["name"]}</at> ' if mention_bot else ""
    activity = _base_activity(
        "message", activity_id=activity_id, when=when, service_url=service_url,
        sender=user_account(user), bot=bot,
        conversation=_channel_conversation(f"{channel_id};messageid={root_id}", tenant_id),
        channel_data={
            "teamsTeamId": team["id"], "teamsChannelId": channel_id,
            "team": {"id": team["id"]}, "channel": {"id": channel_id}, "tenant": {"id": tenant_id},
        },
    )
    activity.update(
        textFormat="plain",
        text=mention + text_html,
        attachments=[{"contentType": "text/html", "content": f"<p>{html_mention}{text_html}</p>"}]
        + list(attachments or []),
    )
    if mention_bot:
        activity["entities"].append(mention_entity(bot["id"], bot["name"]))
    activity["entities"].extend(entities or [])
    if root_id != activity_id:
        activity["replyToId"] = root_id
    return activity


def message_change_activity(
    *, kind: str, message_id: str, when: float, service_url: str, tenant_id: str, team: dict[str, Any],
    channel_id: str, root_id: str, user: dict[str, Any], bot: dict[str, Any], text_html: str | None = None,
) -> dict[str, Any]:
    """A person edited (``kind="edit"``) or deleted (``kind="delete"``) their channel post.

    Teams sends ``messageUpdate`` with ``channelData.eventType`` ``editMessage`` (the whole
    revised message: text and the ``text/html`` attachment) or ``messageDelete`` with
    ``softDeleteMessage`` (no text). Either way the activity ``id`` is the *changed*
    message's id, not a new one, and the conversation is the thread's, as for the post.
    """
    edit = kind == "edit"
    activity = _base_activity(
        "messageUpdate" if edit else "messageDelete", activity_id=message_id, when=when, service_url=service_url,
        sender=user_account(user), bot=bot,
        conversation=_channel_conversation(f"{channel_id};messageid={root_id}", tenant_id),
        channel_data={
            "eventType": "editMessage" if edit else "softDeleteMessage",
            "teamsTeamId": team["id"], "teamsChannelId": channel_id,
            "team": {"id": team["id"]}, "channel": {"id": channel_id}, "tenant": {"id": tenant_id},
        },
    )
    if edit:
        activity.update(
            textFormat="plain", text=text_html or "",
            attachments=[{"contentType": "text/html", "content": f"<p>{text_html or ''}</p>"}],
        )
    if root_id != message_id:
        activity["replyToId"] = root_id
    return activity


def installation_update_activity(
    *, action: str, activity_id: str, when: float, service_url: str, tenant_id: str,
    team: dict[str, Any], user: dict[str, Any], bot: dict[str, Any],
) -> dict[str, Any]:
    """``installationUpdate`` (action ``add`` or ``remove``) for an app installed in a team."""
    activity = _base_activity(
        "installationUpdate", activity_id=activity_id, when=when, service_url=service_url,
        sender=user_account(user), bot=bot,
        conversation=_channel_conversation(team["id"], tenant_id),
        channel_data={
            "settings": {"selectedChannel": {"id": team["id"]}},
            "channel": {"id": team["id"]}, "team": _team_ref(team),
            "tenant": {"id": tenant_id}, "source": {"name": "message"},
        },
    )
    activity["action"] = action
    return activity


def members_update_activity(
    *, added: bool, activity_id: str, when: float, service_url: str, tenant_id: str,
    team: dict[str, Any], user: dict[str, Any], bot: dict[str, Any], members: list[dict[str, Any]],
) -> dict[str, Any]:
    """``conversationUpdate`` for members added to or removed from a team (the bot included)."""
    activity = _base_activity(
        "conversationUpdate", activity_id=activity_id, when=when, service_url=service_url,
        sender=user_account(user), bot=bot,
        conversation=_channel_conversation(team["id"], tenant_id),
        channel_data={
            "team": _team_ref(team), "eventType": "teamMemberAdded" if added else "teamMemberRemoved",
            "tenant": {"id": tenant_id},
        },
    )
    activity["membersAdded" if added else "membersRemoved"] = [{"id": m["id"]} for m in members]
    return activity


CHANNEL_EVENT_TYPES = ("channelCreated", "channelDeleted", "channelRenamed", "channelRestored")


def channel_event_activity(
    *, event_type: str, activity_id: str, when: float, service_url: str, tenant_id: str,
    team: dict[str, Any], channel: dict[str, Any], user: dict[str, Any], bot: dict[str, Any],
) -> dict[str, Any]:
    """``conversationUpdate`` telling the bot a channel of its team was created, deleted, ...

    Teams sends it to every bot installed in the team, whoever made the change: a person in
    the UI or an app through Graph. ``channel`` is ``{"id", "name"}``. ``user`` is who did
    it: a person (``from`` then carries the AAD object id, as in the other events) or, when
    an app did it through Graph, that app's Bot Framework account ``{"id": "28:<app id>",
    "name"}`` (no AAD object id), which ``from`` carries as is. The conversation is the
    team's (its General channel's thread id), not the channel's.
    """
    if event_type not in CHANNEL_EVENT_TYPES:
        raise ValueError(f"unknown channel event {event_type!r}")
    sender = user_account(user) if "aadObjectId" in user else {"id": user["id"], "name": user.get("name")}
    return _base_activity(
        "conversationUpdate", activity_id=activity_id, when=when, service_url=service_url,
        sender=sender, bot=bot,
        conversation=_channel_conversation(team["id"], tenant_id),
        channel_data={
            "channel": {"id": channel["id"], "name": channel["name"]}, "eventType": event_type,
            "team": _team_ref(team), "tenant": {"id": tenant_id},
        },
    )


def card_action_activity(
    *, when: float, service_url: str, tenant_id: str, team: dict[str, Any], channel_id: str, card_post_id: str,
    user: dict[str, Any], bot: dict[str, Any], verb: str, data: dict[str, Any],
) -> dict[str, Any]:
    """A person pressing an ``Action.Execute`` button on a card the bot posted: an
    ``adaptiveCard/action`` invoke whose reply the client shows in place of the card."""
    activity = _base_activity(
        "invoke", activity_id=f"f:{uuid.uuid4().hex}", when=when, service_url=service_url,
        sender=user_account(user), bot=bot,
        conversation=_channel_conversation(f"{channel_id};messageid={card_post_id}", tenant_id),
        channel_data={
            "teamsTeamId": team["id"], "teamsChannelId": channel_id,
            "team": {"id": team["id"]}, "channel": {"id": channel_id}, "tenant": {"id": tenant_id},
            "source": {"name": "message"}, "legacy": {"replyToId": card_post_id},
        },
    )
    activity.update(
        name="adaptiveCard/action",
        replyToId=card_post_id,
        value={"action": {"type": "Action.Execute", "verb": verb, "data": data}, "trigger": "manual"},
    )
    return activity


# ---------------------------------------------------------------- rich content
# Shapes from Microsoft's documentation of what Teams sends a bot: inline images are an
# ``image/*`` attachment whose ``contentUrl`` is the connector's
# ``{serviceUrl}v3/attachments/{id}/views/original`` (download with the bot's token) plus an
# ``<img itemtype="http://schema.skype.com/AMSImage" src=".../views/imgo">`` in the
# ``text/html`` attachment (not for downloading); Giphy GIFs and stickers are only in the
# HTML (``<readonly itemtype=".../Giphy">`` / ``".../Sticker"``); files shared in a channel
# are ``reference`` attachments naming the SharePoint URL; @mentions of people are ``<at>``
# plus a ``mention`` entity.

AMS_IMAGE_ITEMTYPE = "http://schema.skype.com/AMSImage"
GIPHY_ITEMTYPE = "http://schema.skype.com/Giphy"
STICKER_ITEMTYPE = "http://schema.skype.com/Sticker"


def new_ams_object_id() -> str:
    """An Azure Media Services object id as Teams writes them (``0-<region>-d<n>-<32 hex>``)."""
    return f"0-weu-d{secrets.randbelow(9) + 1}-{uuid.uuid4().hex}"


def connector_attachment_url(service_url: str, object_id: str, view: str = "original") -> str:
    return f"{service_url.rstrip('/')}/v3/attachments/{object_id}/views/{view}"


def inline_image_attachment(content_url: str, content_type: str = "image/*") -> dict[str, Any]:
    return {"contentType": content_type, "contentUrl": content_url}


def ams_image_html(src: str, *, width: int = 250, height: int = 250, alt: str = "image") -> str:
    return (f'<img src="{src}" width="{width}" height="{height}" alt="{alt}" itemscope="png" '
            f'itemtype="{AMS_IMAGE_ITEMTYPE}" style="vertical-align:bottom; width:{width}px; height:{height}px">')


def giphy_html(url: str, title: str) -> str:
    label = f"{title} (GIF Image)"
    return (f'<readonly title="{label}" itemtype="{GIPHY_ITEMTYPE}" contenteditable="false" aria-label="{label}">'
            f'<img style="height:auto;margin-top:4px;max-width:100%;" alt="{label}" height="250" width="350" '
            f'src="{url}" itemtype="{GIPHY_ITEMTYPE}"></readonly>')


def sticker_html(url: str, title: str) -> str:
    return (f'<readonly title="{title}" itemtype="{STICKER_ITEMTYPE}" contenteditable="false" aria-label="{title}">'
            f'<img src="{url}" width="250" height="250" alt="Sticker image, {title}" '
            f'itemtype="{STICKER_ITEMTYPE}"></readonly>')


def file_reference_attachment(url: str, name: str) -> dict[str, Any]:
    """A file shared in a channel: stored in the team's SharePoint, sent as a link."""
    return {"contentType": "reference", "contentUrl": url, "name": name}


def person_mention_entity(user: dict[str, Any]) -> dict[str, Any]:
    return {"type": "mention", "mentioned": {"id": user["id"], "name": user["name"]},
            "text": f"<at>{user['name']}</at>"}
