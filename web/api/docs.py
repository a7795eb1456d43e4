"""The API's contract: GET /openapi.json (OpenAPI 3.1, from the protocol models) and GET
/docs, Swagger UI served from this server (the swagger-ui-py package's bundle), so the page
works with no network. Both are open when CONVEYOR_API_KEYS is set: they hold no data, and
the page's "Authorize" button sends a key with the requests it tries.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from flask import Blueprint, Flask, current_app, jsonify, send_from_directory
from swagger_ui.utils import SWAGGER_UI_PY_ROOT

from web.app_services import EXTENSION as SERVICES
from web.openapi import OpenAPIDocument

bp = Blueprint("docs", __name__)
EXTENSION = "conveyor_openapi"
OPEN_PATHS = ("/openapi.json", "/docs")
ASSETS_PREFIX = "/docs/assets/"
HERE = Path(__file__).resolve().parents[1] / "static" / "apidocs"
# The only files of the bundle the page loads.
BUNDLE = SWAGGER_UI_PY_ROOT / "static"
BUNDLE_FILES = ("swagger-ui.css", "swagger-ui-bundle.js")


def is_open(path: str) -> bool:
    """Return whether a path is the document, the page or one of its files."""
    return path in OPEN_PATHS or path.startswith(ASSETS_PREFIX)


@bp.get("/openapi.json")
def openapi():
    return jsonify(current_app.extensions[EXTENSION].document())


@bp.get("/docs")
def docs():
    return send_from_directory(HERE, "index.html", mimetype="text/html", max_age=0)


@bp.get("/docs/assets/<name>")
def asset(name: str):
    """Serve the page's script, or Swagger UI's bundle (404 for anything else)."""
    folder = BUNDLE if name in BUNDLE_FILES else HERE
    return send_from_directory(folder, name, max_age=3600)


def install(app: Flask) -> None:
    """Serve the document and the page."""
    try:
        release = version("conveyor")
    except PackageNotFoundError:  # a source tree that was never installed
        release = "0"
    settings = app.extensions[SERVICES].settings
    app.extensions[EXTENSION] = OpenAPIDocument(settings, release)
    app.register_blueprint(bp)
