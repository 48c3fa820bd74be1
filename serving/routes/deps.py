"""What routes share: the store/settings/metrics dependencies, fast JSON in and out.

Request JSON is parsed with orjson, which rejects ``NaN``/``Infinity`` literals and
numbers that overflow to infinity (stdlib ``json`` would accept them); a body that is
not JSON becomes a 400 in :mod:`serving.errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from email.message import Message
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Path, Request
from fastapi._compat import field_annotation_is_sequence
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from serving.errors import BadRequest
from serving.metrics import ServiceMetrics
from serving.schemas import ErrorOut
from serving.settings import Settings
from serving.store import PolicyStore

M = TypeVar("M", bound=BaseModel)

#: Ids accepted when creating a placement: safe in URLs, log lines and metric labels.
PLACEMENT_PATTERN = r"^[A-Za-z0-9_.:~-]{1,128}$"


class JSON(Response):
    """JSON response rendered with orjson (numpy scalars and arrays allowed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class StrictQueryRoute(APIRoute):
    """An APIRoute that answers 422 to query parameters it does not declare, or gives twice,
    naming the ones it takes (a misspelt ``?segmnet=`` would otherwise be ignored silently).

    A request without a query string costs one look-up (the decide hot path). Every such
    route documents the 422."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        responses = dict(kwargs.get("responses") or {})
        responses.setdefault(422, {"model": ErrorOut, "description": ERROR_TEXT[422]})
        kwargs["responses"] = responses
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        allowed = query_names(self.dependant)
        repeatable = list_query_names(self.dependant)
        takes = f"it takes {', '.join(sorted(allowed))}" if allowed else "it takes none"

        async def strict_handler(request: Request) -> Response:
            if request.scope.get("query_string"):
                check_query(request, allowed, takes, repeatable)
            return await handler(request)

        return strict_handler


def query_names(dependant: Any) -> frozenset[str]:
    """The query parameters a route declares, its dependencies' included (a ``Dependant`` tree)."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= query_names(sub)
    return frozenset(names)


def list_query_names(dependant: Any) -> frozenset[str]:
    """The query parameters a route declares as lists (``?placement=a&placement=b``)."""
    names = {p.alias for p in dependant.query_params if field_annotation_is_sequence(p.field_info.annotation)}
    for sub in dependant.dependencies:
        names |= list_query_names(sub)
    return frozenset(names)


def check_query(
    request: Request, allowed: frozenset[str], takes: str, repeatable: frozenset[str] = frozenset()
) -> None:
    """422 for each query parameter not in ``allowed``, or given more than once (unless a list)."""
    names = [name for name, _ in request.query_params.multi_items()]
    issues = [
        {"loc": ("query", name), "msg": f"unknown query parameter {name!r}: {takes}", "type": "extra_forbidden"}
        for name in dict.fromkeys(names)
        if name not in allowed
    ]
    issues += [
        {"loc": ("query", name), "msg": f"query parameter {name!r} is given more than once", "type": "repeated"}
        for name in dict.fromkeys(names)
        if name in allowed and name not in repeatable and names.count(name) > 1
    ]
    if issues:
        raise RequestValidationError(issues)


class OrjsonRoute(StrictQueryRoute):
    """An APIRoute whose JSON bodies are parsed by orjson (strict about non-finite numbers)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def orjson_handler(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return orjson_handler


ERROR_TEXT = {
    400: "Malformed JSON body",
    401: "Missing or wrong API key (when the endpoint's key is set: write, read or decide)",
    403: "A page's post (no write key) whose events' floors ids do not verify",
    408: "The request body did not arrive in time; the connection is closed",
    404: "Unknown placement",
    413: "Request body over the size limit",
    415: "Body is not JSON (or NDJSON where accepted)",
    422: "Invalid input; the detail names the field",
    503: "Not ready (store closing or storage failing), or model registry unavailable",
    507: "Insufficient storage: the disk refused a write or fsync; nothing was stored, retry after Retry-After",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (all ``{"detail": ...}``)."""
    return {code: {"model": ErrorOut, "description": ERROR_TEXT[code]} for code in codes}


#: Statuses of any endpoint that reads a JSON body.
BODY_ERRORS = (400, 408, 413, 415, 422)


JSON_TYPES = frozenset({"application/json", "text/json"})


def media_type(request: Request) -> str:
    """The request's media type (``application/json`` when it sent no Content-Type)."""
    raw = request.headers.get("content-type")
    if not raw:
        return "application/json"
    message = Message()
    message["content-type"] = raw
    return message.get_content_type()


def is_json(kind: str) -> bool:
    return kind in JSON_TYPES or kind.endswith("+json")


def unsupported(kind: str, accepted: str = "application/json") -> HTTPException:
    return HTTPException(415, f"Content-Type {kind!r} is not supported; send {accepted}")


def parse_json(raw: bytes) -> Any:
    """A JSON document from raw bytes, or a 400 that says why it is not one."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None


async def read_body(request: Request, model: type[M]) -> M:
    """The request's JSON body validated as ``model``: 415 if not JSON, 400 if malformed,
    422 (FastAPI's shape, locations under ``body``) if invalid.

    Used by the hot endpoints instead of a declared body parameter: orjson + one pydantic
    pass costs a fraction of FastAPI's generic body handling (their OpenAPI request body
    is declared with :func:`body_schema`).
    """
    kind = media_type(request)
    if not is_json(kind):
        raise unsupported(kind)
    data = parse_json(await request.body())
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        issues = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in issues]) from None


def body_schema(name: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a required JSON body of component schema ``name``
    (published by :func:`serving.app.create_app`)."""
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


async def get_store(request: Request) -> PolicyStore:
    return request.app.state.store


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


StoreDep = Annotated[PolicyStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
PlacementPath = Annotated[
    str,
    Path(
        description="Placement id (letters, digits, '_', '-', '.', ':', '~'; at most 128).", pattern=PLACEMENT_PATTERN
    ),
]
