"""The page for people at `/`: a playground for every model and a live view of the fleet.

Browsers (requests that prefer text/html) get the page; API clients keep the JSON of
`GET /`. The page is plain HTML, CSS and JavaScript from web/templates and web/static, with
no build step and nothing from the network; its script uses only the public HTTP API.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template, request, send_from_directory

bp = Blueprint("page", __name__)

PAGE_PATHS = ("/",)
OPEN_FILES = ("/favicon.ico",)


def wants_html() -> bool:
    """Return whether this request prefers HTML to JSON (a browser, not an API client).

    `*/*`, no Accept header and `application/json` all pick JSON: only an explicit text/html
    ranked above JSON picks the page.
    """
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def is_page_request() -> bool:
    """Return whether this request asks for the page: a browser's GET of `/`."""
    return request.path in PAGE_PATHS and request.method in ("GET", "HEAD") and wants_html()


def is_public() -> bool:
    """Return whether this request is for the page or its files, which hold no data and so
    load without a key (the page then asks for one)."""
    if request.path.startswith("/static/") or request.path in OPEN_FILES:
        return request.method in ("GET", "HEAD")
    return is_page_request()


def page() -> Response:
    """Render the page; it says whether the API wants a key, so the page asks before calling."""
    settings = current_app.extensions["conveyor"].settings
    html = render_template("index.html", auth_required=bool(settings.api_keys))
    resp = Response(html, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico whatever the page links."""
    return send_from_directory(current_app.static_folder, "favicon.svg", mimetype="image/svg+xml")


@bp.after_app_request
def _vary_on_accept(resp: Response) -> Response:
    """`/` answers HTML or JSON by Accept: caches must keep the two apart."""
    if request.path in PAGE_PATHS:
        resp.vary.add("Accept")
    return resp
