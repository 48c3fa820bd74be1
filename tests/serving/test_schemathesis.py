"""Property-based API fuzzing with schemathesis: no generated request, valid or not,
gets a 5xx, and 2xx answers match their documented schema.

The app runs in-process over a fresh state dir holding the ``demo`` placement (so some
generated requests reach a live policy, not only 404s). Examples per operation are
bounded to keep the whole run well under a minute.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.generation import GenerationMode

from adbandit.wiring import create_app
from tests.serving.conftest import test_settings

MAX_EXAMPLES = 25


# schemathesis starts the app's lifespan once and stops it at interpreter exit; the
# directory is removed after that (atexit runs in reverse order of registration).
_STATE = Path(tempfile.mkdtemp(prefix="adbandit-schemathesis-"))
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(test_settings(_STATE / "state", demo=True)))


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value) -> bytes:
    """The documented NDJSON body (an array of events) as one JSON value per line."""
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


#: One test per API operation, named by it (``POST /v1/decide``), so parallel test workers
#: (pytest-xdist) tell them apart and each runs once; valid and invalid requests alike.
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
@given(data=st.data())
def test_no_server_errors(operation, data):
    case = data.draw(st.one_of([operation.as_strategy(mode) for mode in GenerationMode]))
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
