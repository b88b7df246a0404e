"""Rich content of a Teams channel message on its way to the visitor.

Two halves, on both sides of the acknowledgement:

- ``read_activity`` (in the bot, before the ack): the message text from the ``text/html``
  attachment (``services/teams_text.py``) and a plain, JSON-able list of what else the
  message carries, stored in the job payload;
- ``deliver`` (in the job, after the ack): each item is downloaded and uploaded to
  neetoChat (``POST /attachments``), or, when that is not possible, described with a link in
  the message body and explained to the Teams user in the thread.

What arrives how (Microsoft's documented shapes):

=============  ========================================================================
inline image   ``image/*`` attachment, ``contentUrl`` =
               ``{serviceUrl}v3/attachments/{id}/views/original``: downloaded with the
               bot's token; if that fails, the same image from Graph
               (``…/messages/{id}/hostedContents/{hc}/$value``, found in the message body
               Graph returns)
GIF (Giphy)    ``<readonly itemtype=…/Giphy><img src>`` in the HTML: a public URL
sticker        ``<readonly itemtype=…/Sticker><img src>`` in the HTML: a public URL
file / video   ``reference`` attachment with the SharePoint URL: Graph
               ``/shares/u!{base64url}/driveItem`` (size, type) then ``/driveItem/content``
=============  ========================================================================

Limits are checked before the bytes are read wherever the answer says the size (the drive
item's ``size``, ``Content-Length``) and while reading otherwise. A failed attachment never
drops the text: it becomes a link (when the visitor can follow one) and a notice in the
thread. Uploads use the ``Idempotency-Key`` ``teams-att-{activity id}-{index}``, so a retried
job stores nothing twice; transient neetoChat errors raise and the job is retried.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import aiohttp
import httpx
from kiota_abstractions.api_error import APIError

from services.context import BridgeContext
from services.errors import RemoteError
from services.neetochat import MAX_UPLOAD_BYTES
from services.store.base import Workspace
from services.teams import split_thread
from services.teams_text import html_to_text, parse_teams_html

log = logging.getLogger(__name__)

MAX_ATTACHMENTS = 10  # neetoChat takes at most 10 attachment_ids per message
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_read=30)
_CHUNK = 256 * 1024
_FILE_DOWNLOAD_INFO = "application/vnd.microsoft.teams.file.download.info"
_AMS_HOSTS = ("asm.skype.com",)


# ------------------------------------------------------------------ in the bot


def _get(obj: Any, name: str, json_name: str | None = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(json_name or name)
    return getattr(obj, name, None)


def bot_mention_names(activity: Any) -> set[str]:
    """Names under which the message @mentions the bot itself (removed from the text)."""
    recipient = _get(activity, "recipient")
    bot_id = _get(recipient, "id")
    names = {n for n in [_get(recipient, "name")] if n}
    for props, mentioned in _mentions(activity):
        if mentioned.get("id") == bot_id:
            names.add(html_to_text(props.get("text") or "") or mentioned.get("name") or "")
    return {n for n in names if n}


def _mentions(activity: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(entity, its ``mentioned`` account) of each mention entity of the activity."""
    found = []
    for entity in _get(activity, "entities") or []:
        props = entity if isinstance(entity, dict) else getattr(entity, "additional_properties", {}) or {}
        if (_get(entity, "type") or props.get("type")) == "mention":
            found.append((props, props.get("mentioned") or {}))
    return found


def mentioned_people(activity: Any) -> list[dict[str, Any]]:
    """``{"id", "name"}`` of everyone the message @mentions except the bot, in order, once
    each (``/assign @person`` reads them: the text only has names, which are not unique)."""
    bot_id = _get(_get(activity, "recipient"), "id")
    people: list[dict[str, Any]] = []
    for _, mentioned in _mentions(activity):
        if mentioned.get("id") not in (None, bot_id) and all(p["id"] != mentioned["id"] for p in people):
            people.append({"id": mentioned["id"], "name": mentioned.get("name") or ""})
    return people


def read_activity(activity: Any, fallback_text: str) -> tuple[str, list[dict[str, Any]]]:
    """(text, items) of a message activity. ``fallback_text``: the text to use when Teams
    sent no ``text/html`` attachment (the activity's text without the bot's mention)."""
    html = None
    items: list[dict[str, Any]] = []
    image_index = 0
    for att in _get(activity, "attachments") or []:
        content_type = (_get(att, "content_type", "contentType") or "").lower()
        url = _get(att, "content_url", "contentUrl")
        name = _get(att, "name")
        content = _get(att, "content")
        if content_type == "text/html":
            if html is None and isinstance(content, str):
                html = content
        elif content_type.startswith(("image/", "video/", "audio/")) and url:
            kind = "image" if content_type.startswith("image/") else "media"
            items.append(
                {
                    "kind": kind,
                    "url": url,
                    "content_type": content_type,
                    "name": name,
                    "index": image_index if kind == "image" else None,
                }
            )
            image_index += kind == "image"
        elif content_type == "reference" and url:
            items.append({"kind": "file", "url": url, "name": name or _name_from_url(url)})
        elif content_type == _FILE_DOWNLOAD_INFO and isinstance(content, dict) and content.get("downloadUrl"):
            items.append(
                {"kind": "download", "url": content["downloadUrl"], "name": name, "file_type": content.get("fileType")}
            )
        elif content_type:
            items.append({"kind": "unsupported", "content_type": content_type, "name": name})
    if html is None:
        return html_to_text(fallback_text), items
    parsed = parse_teams_html(html, bot_mention_names(activity))
    for media in parsed.media:
        if media.kind in ("gif", "sticker") and media.src and not _is_ams(media.src):
            items.append({"kind": media.kind, "url": media.src, "alt": _describe_alt(media.kind, media.alt)})
    return parsed.text, items


def _is_ams(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host.endswith(_AMS_HOSTS) or "/v1/objects/" in url


def _describe_alt(kind: str, alt: str) -> str:
    alt = re.sub(r"\s*\(GIF Image\)$", "", alt or "").strip()
    alt = re.sub(r"^Sticker image,\s*", "", alt).strip()
    return alt or ("GIF" if kind == "gif" else "sticker")


def _name_from_url(url: str) -> str:
    return unquote(urlparse(url).path.rsplit("/", 1)[-1]) or "file"


# ------------------------------------------------------------------ in the job


class Unavailable(Exception):
    """This item cannot be delivered as a file; ``reason`` is for the Teams user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Fetched:
    filename: str
    content_type: str
    content: bytes


@dataclass
class Delivery:
    attachment_ids: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # lines appended to the visitor's text
    notices: list[str] = field(default_factory=list)  # for the Teams thread

    @property
    def anything(self) -> bool:
        return bool(self.attachment_ids or self.links)


async def deliver(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> Delivery:
    """Upload what can be uploaded; describe the rest. Raises ``RemoteError`` only for
    transient neetoChat failures (the job is retried; the uploads are idempotent)."""
    out = Delivery()
    items = payload.get("attachments") or []
    for position, item in enumerate(items):
        label = _label(item, position)
        if item["kind"] == "unsupported":
            out.notices.append(
                f"{label} was not sent to the visitor: Teams content of type "
                f"{item.get('content_type')} cannot be delivered."
            )
            continue
        if len(out.attachment_ids) >= MAX_ATTACHMENTS:
            _degrade(out, item, label, f"neetoChat takes at most {MAX_ATTACHMENTS} files per message")
            continue
        try:
            fetched = await _fetch(ctx, ws, payload, item)
            attachment = await ctx.neetochat(ws).upload_attachment(
                filename=fetched.filename,
                content_type=fetched.content_type,
                content=fetched.content,
                idempotency_key=f"teams-att-{payload['activity_id']}-{position}",
            )
        except Unavailable as exc:
            _degrade(out, item, label, exc.reason)
            continue
        except RemoteError as exc:
            if exc.status in (413, 415, 422):
                reason = {
                    413: "it is larger than neetoChat accepts (25 MB)",
                    415: "neetoChat does not accept files of this type",
                }.get(exc.status, str(exc))
                _degrade(out, item, label, reason)
                continue
            raise
        out.attachment_ids.append(attachment["id"])
    return out


def _label(item: dict[str, Any], position: int) -> str:
    if item["kind"] in ("gif", "sticker"):
        return f"The {'GIF' if item['kind'] == 'gif' else 'sticker'} “{item.get('alt')}”"
    if item.get("name"):
        return f"The file “{item['name']}”"
    return f"The {'image' if item['kind'] == 'image' else 'attachment'} (#{position + 1})"


def _degrade(out: Delivery, item: dict[str, Any], label: str, reason: str) -> None:
    """A link for the visitor when one can help them; a notice for the Teams user always."""
    kind = item["kind"]
    if kind in ("gif", "sticker"):
        out.links.append(f"[{'GIF' if kind == 'gif' else 'Sticker'}: {item.get('alt')}] {item['url']}")
        out.notices.append(f"{label} reached the visitor as a link: {reason}.")
    elif kind == "file":
        details = ", ".join(x for x in (item.get("content_type"), _human_size(item.get("size"))) if x)
        out.links.append(f"📎 {item.get('name')}{f' ({details})' if details else ''}: {item['url']}")
        out.notices.append(
            f"{label} reached the visitor as a link instead of the file: {reason}. "
            "They can open it only if it is shared with them."
        )
    else:  # inline images, connector media and download links need Teams credentials
        out.notices.append(f"{label} was not sent to the visitor: {reason}.")


# ------------------------------------------------------------------ fetching


async def _fetch(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any], item: dict[str, Any]) -> Fetched:
    kind = item["kind"]
    if kind in ("image", "media"):
        try:
            return await _from_connector(ctx, payload, item)
        except Unavailable as first:
            if kind != "image":
                raise
            try:
                return await _from_hosted_contents(ctx, ws, payload, item)
            except Unavailable as second:
                log.warning("inline image unavailable: %s; %s", first.reason, second.reason)
                raise Unavailable(
                    f"Teams did not let the bridge download it ({first.reason}; Graph: {second.reason})"
                ) from None
    if kind in ("gif", "sticker"):
        fetched = await _download(ctx, item["url"], None, "GIF" if kind == "gif" else "sticker")
        if not fetched.content_type.startswith("image/"):
            raise Unavailable(f"its link did not return an image ({fetched.content_type})")
        return fetched
    if kind == "file":
        return await _from_sharepoint(ctx, ws, payload, item)
    if kind == "download":  # personal-chat files: a pre-authenticated URL
        return await _download(ctx, item["url"], None, item.get("name") or "file")
    raise Unavailable(f"content of kind {kind} cannot be delivered")


async def _from_connector(ctx: BridgeContext, payload: dict[str, Any], item: dict[str, Any]) -> Fetched:
    """The connector's attachment URL, with the bot's token, and only to the service URL
    the activity came from (the token is never sent elsewhere)."""
    url = item["url"]
    service_url = (payload.get("reference") or {}).get("serviceUrl") or ""
    headers = None
    if service_url and _origin(url) == _origin(service_url):
        try:
            authorization = await ctx.poster.connector_authorization(payload["reference"])
        except RemoteError as exc:
            raise Unavailable(f"no bot token: {exc}") from exc
        if authorization:
            headers = {"Authorization": authorization}
    declared = item.get("content_type") or ""
    fetched = await _download(ctx, url, headers, item.get("name") or "image")
    if fetched.content_type in ("", "application/octet-stream"):
        fetched.content_type = _sniff_image(fetched.content) or (declared if "*" not in declared else "")
    if not fetched.content_type.startswith(("image/", "video/", "audio/")):
        raise Unavailable(f"the connector answered {fetched.content_type or 'no content type'}")
    fetched.filename = _filename(
        item.get("name"), "image" if item["kind"] == "image" else "media", fetched.content_type
    )
    return fetched


async def _from_hosted_contents(
    ctx: BridgeContext, ws: Workspace, payload: dict[str, Any], item: dict[str, Any]
) -> Fetched:
    """The same image through Graph: the message's body names its hosted contents in order."""
    try:
        dest = await ctx.destination(ws, (payload.get("user") or {}).get("team_id"))
        group_id = dest.installation.aad_group_id or ws.aad_group_id
        client = ctx.graph.for_tenant(dest.tenant_id).client
    except Exception as exc:  # not linked, no tenant yet: no second path
        raise Unavailable(f"no Graph access ({exc})") from exc
    if not group_id:
        raise Unavailable("the team's group id is not known")
    channel = client.teams.by_team_id(group_id).channels.by_channel_id(payload["channel_id"])
    conversation_id = ((payload.get("reference") or {}).get("conversation") or {}).get("id") or ""
    root = split_thread(conversation_id)[1] or payload["activity_id"]
    message = channel.messages.by_chat_message_id(root)
    if root != payload["activity_id"]:
        message = message.replies.by_chat_message_id1(payload["activity_id"])
    try:
        chat_message = await message.get()
        body = (chat_message.body.content if chat_message and chat_message.body else "") or ""
        hosted = [m.src for m in parse_teams_html(body).media if m.kind == "image" and "/hostedContents/" in m.src]
        index = item.get("index") or 0
        if index >= len(hosted):
            raise Unavailable("Graph shows no such image in the message")
        hosted_id = unquote(hosted[index].split("/hostedContents/", 1)[1].split("/", 1)[0])
        content = await message.hosted_contents.by_chat_message_hosted_content_id(hosted_id).content.get()
    except APIError as exc:
        raise Unavailable(f"{exc.response_status_code} {_api_message(exc)}") from exc
    except httpx.HTTPError as exc:
        raise Unavailable(f"{type(exc).__name__}") from exc
    content = content or b""
    if len(content) > MAX_UPLOAD_BYTES:
        raise Unavailable("it is larger than neetoChat's 25 MB limit")
    content_type = _sniff_image(content) or (item.get("content_type") or "image/png").replace("*", "png")
    return Fetched(_filename(item.get("name"), "image", content_type), content_type, content)


async def _from_sharepoint(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any], item: dict[str, Any]) -> Fetched:
    """A channel file through Graph's shares API: size and type first, then the content."""
    try:
        dest = await ctx.destination(ws, (payload.get("user") or {}).get("team_id"))
        client = ctx.graph.for_tenant(dest.tenant_id).client
    except Exception as exc:
        raise Unavailable(f"no Graph access ({exc})") from exc
    share = "u!" + base64.urlsafe_b64encode(item["url"].encode()).decode().rstrip("=")
    drive_item = client.shares.by_shared_drive_item_id(share).drive_item
    try:
        meta = await drive_item.get()
        name = (meta.name if meta else None) or item.get("name") or _name_from_url(item["url"])
        mime = (meta.file.mime_type if meta and meta.file else None) or _guess_type(name)
        item["content_type"], item["size"] = mime, (meta.size if meta else None)
        if meta and meta.size is not None and meta.size > MAX_UPLOAD_BYTES:
            raise Unavailable("it is larger than neetoChat's 25 MB limit")
        content = await drive_item.content.get()
    except APIError as exc:
        status = exc.response_status_code
        if status == 403:
            raise Unavailable("the bridge is not permitted to read it in SharePoint") from exc
        if status == 404:
            raise Unavailable("SharePoint could not find it") from exc
        raise Unavailable(f"Graph answered {status} {_api_message(exc)}") from exc
    except httpx.HTTPError as exc:
        raise Unavailable(f"downloading it failed ({type(exc).__name__})") from exc
    content = content or b""
    if len(content) > MAX_UPLOAD_BYTES:
        raise Unavailable("it is larger than neetoChat's 25 MB limit")
    return Fetched(name, mime, content)


async def _download(ctx: BridgeContext, url: str, headers: dict[str, str] | None, what: str) -> Fetched:
    """GET with the size limit checked on ``Content-Length`` before reading and while reading."""
    if urlparse(url).scheme not in ("http", "https"):
        raise Unavailable("its address is not a web link")
    try:
        async with ctx.http.get(url, headers=headers, timeout=DOWNLOAD_TIMEOUT) as resp:
            if resp.status >= 400:
                raise Unavailable(f"{resp.status} {resp.reason or ''}".strip())
            if resp.content_length is not None and resp.content_length > MAX_UPLOAD_BYTES:
                raise Unavailable("it is larger than neetoChat's 25 MB limit")
            chunks, total = [], 0
            async for chunk in resp.content.iter_chunked(_CHUNK):
                total += len(chunk)
                if total > MAX_UPLOAD_BYTES:
                    raise Unavailable("it is larger than neetoChat's 25 MB limit")
                chunks.append(chunk)
            content_type = (resp.content_type or "").lower()
            filename = _disposition_name(resp.headers.get("Content-Disposition")) or _name_from_url(url) or what
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(f"downloading it failed ({type(exc).__name__})") from exc
    return Fetched(filename, content_type, b"".join(chunks))


# ------------------------------------------------------------------ small helpers


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = urlparse(url)
    return parsed.scheme.lower(), (parsed.hostname or "").lower(), parsed.port


def _api_message(exc: APIError) -> str:
    error = getattr(exc, "error", None)
    return (getattr(error, "message", None) or getattr(error, "code", None) or "").strip() or "error"


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _filename(name: str | None, stem: str, content_type: str) -> str:
    if name:
        return name
    extension = mimetypes.guess_extension(content_type) or ""
    return f"{stem}{'.jpg' if extension in ('.jpe', '.jpeg') else extension}"


def _disposition_name(header: str | None) -> str | None:
    if not header:
        return None
    match = re.search(r"filename\*=UTF-8''([^;]+)", header, re.I)
    if match:
        return unquote(match.group(1))
    match = re.search(r'filename="?([^";]+)"?', header, re.I)
    return match.group(1) if match else None


def _sniff_image(content: bytes) -> str | None:
    signatures = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif"}
    for magic, content_type in signatures.items():
        if content.startswith(magic):
            return content_type
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp"
    return None


def _human_size(size: int | None) -> str:
    if not size:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""
