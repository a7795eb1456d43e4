"""The API's contract: GET /openapi.json (OpenAPI 3.1, from the protocol models) and GET
/docs, Swagger UI served from this server (the swagger-ui-py package's bundle), so the page
works with no network. Both are open when CONVEYOR_API_KEYS is set: they hold no data, and
the page's "Authorize" button sends a key with the requests it tries.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from flask import Blueprint, Flask, current_app, jsonify, request, send_from_directory
from swagger_ui.utils import SWAGGER_UI_PY_ROOT

from web.app_services import EXTENSION as SERVICES
from web.openapi import OpenAPIDocument

bp = Blueprint("docs", __name__)
EXTENSION = "conveyor_openapi"
HERE = Path(__file__).resolve().parents[1] / "static" / "apidocs"
BUNDLE = SWAGGER_UI_PY_ROOT / "static"
# What the page loads: Swagger UI's style and bundle, and the script that starts it.
FILES = {
    "swagger-ui.css": (BUNDLE, "text/css"),
    "swagger-ui-bundle.js": (BUNDLE, "text/javascript"),
    "init.js": (HERE, "text/javascript"),
}
OPEN_PATHS = ("/openapi.json", "/docs", *(f"/docs/{name}" for name in FILES))


@bp.get("/openapi.json")
def openapi():
    return jsonify(current_app.extensions[EXTENSION].document())


@bp.get("/docs")
def docs():
    return send_from_directory(HERE, "index.html", mimetype="text/html", max_age=0)


@bp.get("/docs/swagger-ui.css")
@bp.get("/docs/swagger-ui-bundle.js")
@bp.get("/docs/init.js")
def asset():
    name = request.path.rsplit("/", 1)[1]
    folder, mimetype = FILES[name]
    return send_from_directory(folder, name, mimetype=mimetype, max_age=3600)


def install(app: Flask) -> None:
    """Serve the document and the page."""
    try:
        release = version("conveyor")
    except PackageNotFoundError:  # a source tree that was never installed
        release = "0"
    svc = app.extensions[SERVICES]
    models = [spec.id for spec in svc.registry]
    app.extensions[EXTENSION] = OpenAPIDocument(svc.settings, release, models)
    app.register_blueprint(bp)
