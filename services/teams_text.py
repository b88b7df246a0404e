"""Text of a Teams channel message as neetoChat's plain text.

Teams delivers channel messages as HTML (the ``text/html`` attachment of the activity; the
bot's @mention as ``<at>…</at>``). neetoChat's contract says a message body is "plain text,
may contain newlines and URLs", so the HTML is turned into readable plain text with a real
parser (the standard library's ``html.parser``), never with regexes:

- paragraphs, ``<div>``, headings and ``<br>`` become line breaks; runs of source
  whitespace collapse as a browser would (``&nbsp;`` is kept: that is what a user typed);
- bold and italic keep their words (plain text has no bold); inline ``<code>`` is wrapped
  in backticks and ``<pre>`` becomes a fenced block with its line breaks kept;
- lists become ``- item`` / ``1. item`` lines (nested lists indented);
- links keep their text and their URL: ``the docs (https://…)`` (the URL alone when the
  text is the URL);
- ``<at>Name</at>`` mentions become the person's name; mentions of the bot itself (named in
  ``skip_mentions``) are removed;
- ``<emoji alt="😀">`` and ``<img itemtype="…/Emoji" alt="😀">`` become the emoji;
- quotes (``<blockquote>``, Teams' "reply with quote" ``itemtype=…/Reply``) become ``> ``
  lines, the quoted author first;
- tables become one line per row, cells separated by `` | ``;
- images, GIFs and stickers are not text: they are returned as ``media`` (in document
  order) so the caller can deliver them as files; ``<script>``/``<style>`` are dropped.

Nothing else between tags is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

_BLOCKS = {
    "p",
    "div",
    "tr",
    "table",
    "thead",
    "tbody",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "section",
    "article",
    "header",
    "footer",
    "figure",
    "figcaption",
    "dl",
    "dt",
    "dd",
}
_SKIP = {"script", "style", "head", "title"}
_VOID = {"br", "img", "hr", "emoji", "input", "meta", "link", "source", "wbr"}
_WS = re.compile(r"[ \t\r\n\f]+")

GIPHY = "schema.skype.com/giphy"
STICKER = "schema.skype.com/sticker"
EMOJI = "schema.skype.com/emoji"
AMS_IMAGE = "schema.skype.com/amsimage"
REPLY = "schema.skype.com/reply"


@dataclass(frozen=True)
class InlineMedia:
    """An image in the message HTML: ``kind`` is ``gif`` (Giphy), ``sticker`` or ``image``
    (a pasted/uploaded picture, whose bytes come with an ``image/*`` attachment)."""

    kind: str
    src: str
    alt: str = ""


@dataclass
class ParsedHtml:
    text: str
    media: list[InlineMedia] = field(default_factory=list)


class _Converter(HTMLParser):
    def __init__(self, skip_mentions: set[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.skip_mentions = {" ".join(m.split()).casefold() for m in skip_mentions}
        self.lines: list[str] = []  # finished lines
        self.current: list[str] = []  # the line being written
        self.quote = 0
        self.lists: list[list[int | None]] = []  # per open list: [counter or None for <ul>]
        self.pending_prefix = ""  # list marker waiting for the first text of an item
        self.pre = 0
        self.skip = 0
        self.links: list[tuple[str | None, int]] = []
        self.mention: list[str] | None = None
        self.media: list[InlineMedia] = []
        self.media_container: list[str] = []  # itemtype of an enclosing <readonly>/<span>
        self.stack: list[str] = []
        self.quote_author: list[bool] = []

    # --------------------------------------------------------------- line handling
    def _prefix(self) -> str:
        return "> " * self.quote

    def _write(self, text: str) -> None:
        if not text:
            return
        if self.mention is not None:
            self.mention.append(text)
            return
        if not self.current:
            text = text.lstrip(" ") if not self.pre else text
            if not text:
                return
            indent = "  " * max(0, len(self.lists) - 1) if self.lists else ""
            self.current.append(self._prefix() + (indent + self.pending_prefix if self.pending_prefix else ""))
            self.pending_prefix = ""
        elif self.current and self.current[-1].endswith(" ") and text.startswith(" ") and not self.pre:
            text = text.lstrip(" ")
        self.current.append(text)

    def _break(self, force: bool = False) -> None:
        """End the current line; ``force`` keeps an empty line (``<br><br>``)."""
        if self.current:
            self.lines.append("".join(self.current).rstrip(" "))
            self.current = []
        elif force:
            self.lines.append(self._prefix().rstrip())

    # --------------------------------------------------------------- tags
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        itemtype = a.get("itemtype", "").lower()
        if tag not in _VOID:
            self.stack.append(tag)
        if tag in _SKIP:
            self.skip += 1
            return
        if self.skip:
            return
        if tag == "br":
            if self.pre:
                self._write("\n")
            else:
                self._break(force=not self.current)
        elif tag == "hr":
            self._break()
            self.lines.append(self._prefix() + "---")
        elif tag == "emoji":
            self._write(a.get("alt") or a.get("title") or "")
        elif tag == "img":
            self._image(a, itemtype)
        elif tag == "at":
            self.mention = []
        elif tag == "a":
            self.links.append((a.get("href") or None, len(self._visible())))
        elif tag == "blockquote":
            self._break()
            self.quote += 1
            self.quote_author.append(REPLY in itemtype)
        elif tag in ("ul", "ol"):
            self._break()
            self.lists.append([1 if tag == "ol" else None])
        elif tag == "li":
            self._break()
            counter = self.lists[-1] if self.lists else [None]
            if counter[0] is None:
                self.pending_prefix = "- "
            else:
                self.pending_prefix = f"{counter[0]}. "
                counter[0] += 1
        elif tag == "pre":
            self._break()
            self.lines.append(self._prefix() + "```")
            self.pre += 1
        elif tag == "code" and not self.pre:
            self._write("`")
        elif tag in ("td", "th"):
            if "".join(self.current).strip(" >"):
                self._write(" | ")
        elif tag in ("readonly", "span", "div") and (GIPHY in itemtype or STICKER in itemtype):
            self.media_container.append(itemtype)
        elif tag == "strong" and a.get("itemprop") == "mri" and self.quote_author and self.quote_author[-1]:
            pass  # the quoted author's name: written as text, followed by ":" at its end tag
        elif tag in _BLOCKS:
            self._break()
        if tag in ("readonly", "span", "div") and not (GIPHY in itemtype or STICKER in itemtype):
            self.media_container.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if tag in self.stack:  # close anything left open inside (lenient, like browsers)
            while self.stack and self.stack.pop() != tag:
                pass
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if tag == "at":
            name = " ".join("".join(self.mention or []).split())
            self.mention = None
            if name and name.casefold() not in self.skip_mentions:
                self._write(name)
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = self._visible()[start:].strip()
            if href and href.lower().startswith(("http://", "https://", "mailto:")):
                if not label:
                    self._write(href)
                elif label.rstrip("/") != href.rstrip("/") and href != f"mailto:{label}":
                    self._write(f" ({href})")
        elif tag == "blockquote":
            self._break()
            self.quote = max(0, self.quote - 1)
            if self.quote_author:
                self.quote_author.pop()
        elif tag in ("ul", "ol"):
            self._break()
            if self.lists:
                self.lists.pop()
        elif tag == "li":
            self._break()
            self.pending_prefix = ""
        elif tag == "pre":
            self._break()
            self.pre = max(0, self.pre - 1)
            self.lines.append(self._prefix() + "```")
        elif tag == "code" and not self.pre:
            self._write("`")
        elif tag == "strong" and self.quote_author and self.quote_author[-1] and self.current:
            self._write(": ")
            self.quote_author[-1] = False  # only the first <strong> is the author
        elif tag in ("readonly", "span", "div") and self.media_container:
            self.media_container.pop()
            if tag == "div":
                self._break()
        elif tag in _BLOCKS:
            self._break()

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            for i, part in enumerate(data.split("\n")):
                if i:
                    self._break(force=True)
                self._write(part)
            return
        self._write(_WS.sub(" ", data))

    # --------------------------------------------------------------- helpers
    def _visible(self) -> str:
        return "".join(self.current)

    def _image(self, a: dict[str, str], itemtype: str) -> None:
        container = next((c for c in reversed(self.media_container) if c), "")
        alt = a.get("alt", "")
        if EMOJI in itemtype:
            self._write(alt or a.get("title", ""))
            return
        src = a.get("src", "")
        if GIPHY in itemtype or GIPHY in container:
            self.media.append(InlineMedia("gif", src, alt or a.get("title", "")))
        elif STICKER in itemtype or STICKER in container:
            self.media.append(InlineMedia("sticker", src, alt or a.get("title", "")))
        elif src:
            self.media.append(InlineMedia("image", src, alt))

    def result(self) -> str:
        self._break()
        lines = [line.replace("\xa0", " ").rstrip() for line in self.lines]
        out: list[str] = []
        for line in lines:  # at most one empty line in a row
            if not line and out and not out[-1]:
                continue
            out.append(line)
        return "\n".join(out).strip("\n").strip()


def parse_teams_html(markup: str, skip_mentions: set[str] | frozenset[str] = frozenset()) -> ParsedHtml:
    """Plain text and the inline media of a Teams message's HTML."""
    parser = _Converter(set(skip_mentions))
    parser.feed(markup or "")
    parser.close()
    return ParsedHtml(parser.result(), parser.media)


def html_to_text(markup: str, skip_mentions: set[str] | frozenset[str] = frozenset()) -> str:
    return parse_teams_html(markup, skip_mentions).text
