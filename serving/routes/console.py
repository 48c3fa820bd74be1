"""``GET /console``: the ad-ops page — weights, floors, revenue, fill, experiment, alarms, data health.

A static page (``serving/console/``: HTML, one hand-written script, one stylesheet; shipped as
package data, nothing from a CDN) over the read API: ``/v1/placements``,
``…/{p}/history`` and ``…/{p}/experiment``. The page itself carries no data and needs no key;
when the service has a read key the script asks for it and sends it as a bearer header on its
API calls (:mod:`serving.auth` checks them as any client's). A Content-Security-Policy keeps
the page to this origin.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

#: Where the page's script and stylesheet are served.
ASSETS_PATH = "/console/assets"
#: The page may load and call nothing but this origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def console_dir() -> Path:
    return Path(str(files("serving") / "console"))


def install(app: FastAPI, path: str = "/console") -> None:
    """Add the page at ``path`` and mount its assets at :data:`ASSETS_PATH`."""
    folder = console_dir()
    page = (folder / "index.html").read_bytes()
    app.mount(ASSETS_PATH, StaticFiles(directory=folder), name="console-assets")

    @app.get(path, include_in_schema=False)
    async def console() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)
