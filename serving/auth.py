"""Bearer-key check for write endpoints (placements, experiments, outcomes, admin).

Active only when the service's ``api_key`` (env ``ADBANDIT_API_KEY``) is set; reads stay
open so ad servers and Prebid can poll allocations and floors without a secret.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

_bearer = HTTPBearer(auto_error=False, description="Required on write endpoints when ADBANDIT_API_KEY is set.")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Raise 401 unless the request carries ``Authorization: Bearer <api_key>`` (when a key is set)."""
    key = request.app.state.settings.api_key
    if key is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing 'Authorization: Bearer <key>' header")
    if not hmac.compare_digest(credentials.credentials.encode(), key.get_secret_value().encode()):
        raise _unauthorized("invalid API key")


#: Add to a route or router: ``dependencies=[WriteAuth]``.
WriteAuth = Depends(require_api_key)
