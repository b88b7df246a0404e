"""The sandbox page (``/sandbox``): both sides of the bridge, live, in one browser tab.

Left, neetoChat: the workspace's conversations and the selected one as the visitor sees it
in the widget, with boxes to start a conversation and to write as the visitor. Right,
Microsoft Teams: the team's channels and posts, cards rendered by Microsoft's Adaptive Cards
JavaScript renderer (npm ``adaptivecards``, served from ``node_modules``), a box to post or
reply as a team member, and the cards' buttons.

The page knows the sandboxes only by their control routes, like a script would: this app
serves the static files (``sandbox/static/``), the vendored renderer, and forwards
``/sandbox/neetochat/{workspace}/_sandbox/...`` and ``/sandbox/teams/_sandbox/...`` to the
two sandboxes (same origin for the browser; nothing but control routes is reachable). The
browser polls them about once a second.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

ROOT = Path(__file__).resolve().parent.parent
STATIC = Path(__file__).resolve().parent / "static"
NODE_MODULES = ROOT / "node_modules"
PATH = "/sandbox"
# Served name → candidate files in node_modules (first that exists wins).
VENDOR = {
    "adaptivecards.min.js": ["adaptivecards/dist/adaptivecards.min.js"],
    "markdown-it.min.js": ["markdown-it/dist/markdown-it.min.js", "markdown-it/dist/browser/markdown-it.umd.min.js"],
}
_FORWARDED_HEADERS = ("Content-Type",)
_NPM_HINT = "run `npm ci` in the project folder (it installs the Adaptive Cards renderer into node_modules)"


def vendor_file(name: str, node_modules: Path = NODE_MODULES) -> Path | None:
    """The installed file served as ``/sandbox/vendor/{name}``, or None when npm has not run."""
    for candidate in VENDOR.get(name, []):
        path = node_modules / candidate
        if path.is_file():
            return path
    return None


def renderer_missing(node_modules: Path = NODE_MODULES) -> str | None:
    """Why the page cannot render cards (None when it can): for the demo to say up front."""
    if vendor_file("adaptivecards.min.js", node_modules) is None:
        return f"the Adaptive Cards renderer is not installed: {_NPM_HINT}"
    return None


def page_app(neeto_url: str, ms_url: str, *, workspace: str, node_modules: Path = NODE_MODULES) -> web.Application:
    """The page as its own aiohttp application (routes under ``/sandbox``; ``/`` redirects
    there), talking to the neetoChat sandbox at ``neeto_url`` (workspace ``workspace``) and
    the Microsoft 365 sandbox at ``ms_url``."""
    neeto_url, ms_url = neeto_url.rstrip("/"), ms_url.rstrip("/")
    neeto_prefix, teams_prefix = f"{PATH}/neetochat/{workspace}/_sandbox/", f"{PATH}/teams/_sandbox/"
    app = web.Application()
    clients: list[aiohttp.ClientSession] = []  # the one session, while the app runs

    async def session(_app: web.Application):
        clients.append(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)))
        yield
        await clients.pop().close()

    app.cleanup_ctx.append(session)

    async def index(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def config(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "workspace": workspace,
                "neetochat": neeto_prefix.rstrip("/"),
                "teams": teams_prefix.rstrip("/"),
                "renderer_missing": renderer_missing(node_modules),
            }
        )

    async def vendor(request: web.Request) -> web.StreamResponse:
        path = vendor_file(request.match_info["name"], node_modules)
        if path is None:
            text = f"// {request.match_info['name']} is not installed: {_NPM_HINT}\n"
            return web.Response(status=404, text=text, content_type="application/javascript")
        return web.FileResponse(path)

    async def forward(request: web.Request, url: URL) -> web.Response:
        """One control request to a sandbox, its answer passed back as it is."""
        headers = {k: request.headers[k] for k in _FORWARDED_HEADERS if k in request.headers}
        body = await request.read() if request.can_read_body else None
        try:
            async with clients[0].request(
                request.method, url, params=request.query, data=body, headers=headers
            ) as resp:
                payload = await resp.read()
                return web.Response(status=resp.status, body=payload, content_type=resp.content_type)
        except aiohttp.ClientError as exc:
            return web.json_response({"error": f"the sandbox at {url} did not answer: {exc}"}, status=502)

    def forwarder(prefix: str, target: str):
        async def handler(request: web.Request) -> web.Response:
            # the raw path keeps ids like 19:…@thread.tacv2 percent-encoded as the browser sent them
            tail = request.raw_path.split("?", 1)[0][len(prefix) :]
            return await forward(request, URL(target + tail, encoded=True))

        return handler

    async def home(_request: web.Request) -> web.Response:
        raise web.HTTPFound(PATH)

    app.router.add_routes(
        [
            web.get("/", home),
            web.get(PATH, index),
            web.get(PATH + "/", index),
            web.get(PATH + "/config.json", config),
            web.get(PATH + "/vendor/{name}", vendor),
            web.route("*", neeto_prefix + "{tail:.*}", forwarder(neeto_prefix, f"{neeto_url}/{workspace}/_sandbox/")),
            web.route("*", teams_prefix + "{tail:.*}", forwarder(teams_prefix, f"{ms_url}/_sandbox/")),
        ]
    )
    app.router.add_static(PATH + "/static", STATIC)
    return app
