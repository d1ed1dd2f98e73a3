"""The status page: one HTML page, a stylesheet and a script, served by the admin API at `/`.

The page is static; its script reads the API's open JSON endpoints (the same the CLI reads) every few seconds and
draws the chart as inline SVG. No framework, no CDN, no build step: the three files ship in the package
(`autoscaler/api/static`). A strict Content-Security-Policy allows nothing but this origin's script, style and
JSON, so a pool name or a reason cannot inject markup (the script also only ever sets text, never HTML).
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

STATIC = resources.files("autoscaler.api") / "static"
ASSETS = {"status.js": "text/javascript; charset=utf-8", "status.css": "text/css; charset=utf-8"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
}


def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def install_status_page(app: FastAPI) -> None:
    @app.get("/", response_class=Response, include_in_schema=False)
    def status_page() -> Response:
        return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)

    def asset_route(name: str, content_type: str) -> None:
        def asset() -> Response:
            return Response(_read(name), media_type=content_type, headers=HEADERS)

        app.add_api_route(
            f"/static/{name}", asset, methods=["GET"], response_class=Response, include_in_schema=False
        )

    for name, content_type in ASSETS.items():
        asset_route(name, content_type)
