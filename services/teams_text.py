"""Text of a Teams channel message as neetoChat's plain text.

Teams delivers channel messages as HTML (and the bot's @mention as ``<at>…</at>``). A real
parser (the standard library's ``html.parser``) turns it into text: block elements and
``<br>`` become line breaks, ``<emoji alt="…">`` becomes the emoji, links keep their URL,
entities are decoded. Nothing between tags is dropped.
"""

from __future__ import annotations

from html.parser import HTMLParser

_BLOCKS = {"p", "div", "li", "tr", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._href: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCKS:
            self._newline()
        elif (
            tag == "emoji"
            and a.get("alt")
            or tag == "img"
            and a.get("alt")
            and "emoji" in (a.get("itemtype") or "").lower()
        ):
            self.parts.append(a["alt"] or "")
        if tag == "a":
            self._href.append(a.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCKS:
            self._newline()
        elif tag == "a" and self._href:
            href = self._href.pop()
            text_so_far = "".join(self.parts)
            if href and not text_so_far.endswith(href):
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def _newline(self) -> None:
        if self.parts and not "".join(self.parts[-1:]).endswith("\n"):
            self.parts.append("\n")


def html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = [line.rstrip() for line in "".join(parser.parts).replace("\xa0", " ").split("\n")]
    return "\n".join(lines).strip()
