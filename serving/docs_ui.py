"""``/docs`` (Swagger UI) and ``/redoc`` served from local files: no CDN at run time.

FastAPI's default pages load Swagger UI, ReDoc and a favicon from public CDNs, so they are
blank on a machine without internet access. The assets here come from the
``fastapi-offline`` package (MIT; Swagger UI 5, ReDoc 2, installed with ``adbandit[serve]``)
and are mounted at :data:`STATIC_PATH`; the pages point at them.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

#: Where the Swagger UI / ReDoc assets are served.
STATIC_PATH = "/static/docs"
#: The files the pages load (all inside the ``fastapi_offline`` package's ``static`` folder).
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> Path:
    """The installed asset folder; raises ``FileNotFoundError`` naming a missing file."""
    folder = Path(str(files("fastapi_offline") / "static"))
    for name in ASSETS:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"API docs asset {folder / name} is missing (reinstall adbandit[serve])")
    return folder


def install_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Mount the assets and add the two pages (create the app with ``docs_url=None, redoc_url=None``)."""
    app.mount(STATIC_PATH, StaticFiles(directory=assets_dir()), name="docs-static")
    oauth2_redirect_url = f"{docs_url}/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
            swagger_js_url=f"{root}{STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
            with_google_fonts=False,
        )
