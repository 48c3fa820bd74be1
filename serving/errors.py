"""The one place where errors become HTTP responses, all as ``{"detail": ...}``.

Domain errors (:mod:`bandit.errors`) map to 4xx by type; request validation errors keep
FastAPI's list of ``{"loc", "msg", "type"}`` (the location names the field) but never
echo the input back; malformed JSON is a 400; anything unexpected is logged and
answered with a 500 that carries no internals. A disk that refuses a write or an fsync
(:class:`~bandit.errors.StorageFailure`) is a 507 with ``Retry-After``: nothing of the
request was stored, and the same request may be sent again.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from bandit.errors import (
    AdbanditError,
    InvalidConfig,
    InvalidDecisionRequest,
    InvalidOutcome,
    InvalidState,
    StorageFailure,
    UnknownNetwork,
    UnknownPlacement,
)

log = logging.getLogger("adbandit.serving")

#: Domain error type → HTTP status. Checked in order (most specific first).
STATUS_OF: tuple[tuple[type[AdbanditError], int], ...] = (
    (UnknownPlacement, 404),
    (UnknownNetwork, 422),
    (InvalidConfig, 422),
    (InvalidOutcome, 422),
    (InvalidDecisionRequest, 422),
    (InvalidState, 422),
    (AdbanditError, 422),
)


class BadRequest(HTTPException):
    """400: the body is not what the endpoint reads at all (malformed JSON, wrong media type)."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=400, detail=detail)


class BodyTooLarge(HTTPException):
    """413: the request body is over ``max_body_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body is larger than the limit of {limit} bytes")


class RequestTimeout(HTTPException):
    """408: the request body did not arrive within the timeout; the connection is closed."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            status_code=408,
            detail=f"the request body did not arrive within {timeout_s:g} s; send it at once after the headers",
            headers={"Connection": "close"},
        )


#: Status recorded for a request whose client went away (nginx's "client closed request";
#: nobody receives it): a client's doing, never counted or logged as a server error.
CLIENT_CLOSED = 499


class ClientGone(HTTPException):
    """499: the client disconnected before its request was read."""

    def __init__(self) -> None:
        super().__init__(status_code=CLIENT_CLOSED, detail="client closed the request")


class ServiceUnavailable(HTTPException):
    """503: a dependency (e.g. the model registry) cannot be reached right now."""

    def __init__(self, detail: str, retry_after_s: int | None = None) -> None:
        headers = None if retry_after_s is None else {"Retry-After": str(retry_after_s)}
        super().__init__(status_code=503, detail=detail, headers=headers)


#: Seconds a client should wait before retrying a request the disk refused.
STORAGE_RETRY_AFTER_S = 5


def status_of(exc: AdbanditError) -> int:
    for kind, status in STATUS_OF:
        if isinstance(exc, kind):
            return status
    return 422


def _clean_errors(errors: list[dict]) -> list[dict]:
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errors
    ]


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AdbanditError)
    return JSONResponse({"detail": str(exc)}, status_code=status_of(exc))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        why = (bad_json[0].get("ctx") or {}).get("error", "cannot be parsed")
        return JSONResponse({"detail": f"malformed JSON body: {why}"}, status_code=400)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and "json" not in kind and any(list(e.get("loc", ())) == ["body"] for e in errors):
        return JSONResponse({"detail": f"Content-Type {kind!r} is not JSON; send application/json"}, status_code=415)
    return JSONResponse({"detail": _clean_errors(errors)}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":  # no route matched the path
        detail = f"no endpoint {request.method} {request.url.path}; the API is listed at /docs"
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        allowed = (exc.headers or {}).get("Allow", "")
        detail = f"{request.method} is not allowed on {request.url.path}; use {allowed or 'another method'}"
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


_storage_logged = 0.0


async def _storage_failure(request: Request, exc: Exception) -> Response:
    global _storage_logged
    now = time.monotonic()
    if now - _storage_logged >= STORAGE_RETRY_AFTER_S:  # one line per interval, not per request
        _storage_logged = now
        log.error("storage failure on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": str(exc)}, status_code=507, headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)})


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    log.debug("client disconnected on %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error; see the service log"}, status_code=500)


def install(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(AdbanditError, _domain_error)
    app.add_exception_handler(StorageFailure, _storage_failure)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)  # not a 500: the client left
    app.add_exception_handler(Exception, _unexpected)
