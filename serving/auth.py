"""Bearer keys by scope: write, read, decide. Each is active only when its key is set.

- **write**: ``PUT`` placements and experiments, ``POST /v1/outcomes``, ``/v1/admin/*``;
  key ``ADBANDIT_API_KEY``.
- **read**: ``GET`` placements, allocations, experiment reports, ``/metrics``; key
  ``ADBANDIT_READ_API_KEY`` or the write key.
- **decide**: ``POST /v1/decide``, ``/v1/decide/batch``, ``GET /v1/prebid/floors``,
  ``POST /v1/openrtb/floors``; key ``ADBANDIT_DECIDE_API_KEY`` or the write key.

``POST /v1/outcomes`` from a **page** (:func:`outcome_poster`): a Prebid page cannot keep the
write key secret, so with ``ADBANDIT_PREBID_PAGE_OUTCOMES`` (the default) a post *without* an
``Authorization`` header is a page's post, in which each event is accepted only with a
floors id of the Prebid floors document that verifies (the signature is the credential,
bounded in age; :mod:`serving.intake`). A wrong key is still a 401.

The OpenRTB notices (``GET /v1/openrtb/{win,billing,loss}``) take no key: exchanges fire them
and cannot send one; the signed decision id they carry must verify (:mod:`serving.openrtb`).

Without ``ADBANDIT_READ_API_KEY`` reads stay open and without ``ADBANDIT_DECIDE_API_KEY``
decisions and Prebid floors stay open (as before: ad servers and Prebid.js poll them).
``/healthz``, ``/docs`` and ``/openapi.json`` are always open. Keys are compared in
constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

Scope = Literal["write", "read", "decide"]

_bearer = HTTPBearer(
    auto_error=False,
    description="ADBANDIT_API_KEY (writes, and everything else), ADBANDIT_READ_API_KEY (reads of business "
    "data), ADBANDIT_DECIDE_API_KEY (decisions, Prebid floors); each required only when set.",
)

_KEY_NAMES = {
    "write": "the write key (ADBANDIT_API_KEY)",
    "read": "the read key (ADBANDIT_READ_API_KEY) or the write key",
    "decide": "the decide key (ADBANDIT_DECIDE_API_KEY) or the write key",
}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def accepted_keys(settings: object, scope: Scope) -> tuple[bytes, ...]:
    """The keys that open ``scope`` (empty: the scope is open)."""
    write = getattr(settings, "api_key", None)
    own = {
        "write": None,
        "read": getattr(settings, "read_api_key", None),
        "decide": getattr(settings, "decide_api_key", None),
    }[scope]
    if scope == "write":
        keys = [write]
    elif own is None:
        return ()
    else:
        keys = [own, write]
    return tuple(k.get_secret_value().encode() for k in keys if k is not None)


def check_bearer(authorization: str | None, keys: tuple[bytes, ...], scope: Scope) -> None:
    """Raise 401 unless ``authorization`` is ``Bearer <one of keys>`` (no keys: open)."""
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized(f"missing 'Authorization: Bearer <key>' header; this endpoint needs {_KEY_NAMES[scope]}")
    given = token.strip().encode()
    ok = False
    for key in keys:  # compare with every key: the time taken does not say which one matched
        ok |= hmac.compare_digest(given, key)
    if not ok:
        raise _unauthorized(f"invalid API key; this endpoint needs {_KEY_NAMES[scope]}")


def _dependency(scope: Scope):
    async def require(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        keys = accepted_keys(request.app.state.settings, scope)
        if keys:
            header = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
            check_bearer(header, keys, scope)

    require.__name__ = f"require_{scope}_key"
    return require


Poster = Literal["server", "page"]


def poster_of(authorization: str | None, keys: tuple[bytes, ...], pages_allowed: bool) -> Poster:
    """Who posts outcomes: ``"page"`` when a write key is set, the request sends no
    ``Authorization`` and pages may post; else ``"server"`` once :func:`check_bearer` passes."""
    if keys and authorization is None and pages_allowed:
        return "page"
    check_bearer(authorization, keys, "write")
    return "server"


async def outcome_poster(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Poster:
    """Dependency of ``POST /v1/outcomes``: a server with the write key (or none set), or a page."""
    settings = request.app.state.settings
    header = request.headers.get("authorization")
    if credentials is not None:
        header = f"{credentials.scheme} {credentials.credentials}"
    return poster_of(header, accepted_keys(settings, "write"), bool(getattr(settings, "prebid_page_outcomes", True)))


OutcomePoster = Annotated[Poster, Depends(outcome_poster)]

require_api_key = _dependency("write")
require_read_key = _dependency("read")
require_decide_key = _dependency("decide")

#: Add to a route or router: ``dependencies=[WriteAuth]`` (``ReadAuth``, ``DecideAuth``).
WriteAuth = Depends(require_api_key)
ReadAuth = Depends(require_read_key)
DecideAuth = Depends(require_decide_key)
