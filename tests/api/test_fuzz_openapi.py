"""No input makes the server fail: schemathesis fuzzes every operation of the OpenAPI document
(every dialect the app serves, since the document is generated from the route table) with valid
and invalid bodies, parameters and headers, authenticated as a real owner who has a file and a
job. Every answer must be a non-5xx that matches the documented status codes and schemas.

The bounded run here uses PREFTUNE_FUZZ_EXAMPLES examples per operation (default 25, under a
minute on 2 cores); `make fuzz` runs the same test with many more.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks as st_checks
from schemathesis.generation.modes import GenerationMode

from preftune.api.app import create_app
from preftune.config import Settings
from preftune.service import files as file_service
from preftune.service import keys as key_service
from preftune.service.bootstrap import bootstrap

EXAMPLES = int(os.environ.get("PREFTUNE_FUZZ_EXAMPLES", "25"))
VALID_PAIR = (
    b'{"input": {"messages": [{"role": "user", "content": "Say hi."}]}, '
    b'"preferred_output": [{"role": "assistant", "content": "Hi!"}], '
    b'"non_preferred_output": [{"role": "assistant", "content": "No."}]}\n'
)


@pytest.fixture(scope="module")
def fuzz_target() -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="preftune-fuzz-"))
    config = Settings(home=home / "home", max_upload_bytes=256 * 1024, allow_on_demand_load=False)
    db, blobs, _ = bootstrap(config)
    with db.session() as session:
        owner = key_service.create_owner(session, "fuzzer")
        _, key = key_service.create_key(session, owner.id, "fuzz")
        staged = blobs.stage_chunks([VALID_PAIR * 4])
        file_service.create_file(session, owner.id, staged, blobs=blobs, filename="seed.jsonl", name="seed")
    db.dispose()
    app = create_app(config)
    return {"app": app, "key": key}


# Checked: no 5xx, documented status codes, content types, headers and response schemas.
# Not checked: `positive_data_acceptance` (a schema-valid request must succeed: cannot hold for ids that do
# not exist, 404, or models this server lacks) and `negative_data_rejection` (a schema-invalid request must be
# refused: its mutations are not invalid for multipart form fields, which are all strings, nor for the
# Authorization header, which this test always sends).
EXCLUDED = [st_checks.positive_data_acceptance, st_checks.negative_data_rejection]


def _fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> tuple[int, str | None]:
    """Run one operation's examples in one mode; (requests sent, the failure or None)."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=os.environ.get("PREFTUNE_FUZZ_RANDOM") is None,
        database=None,
    )
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

    try:
        run()
    except Unsatisfiable:
        # Negative mode on an operation without parameters or body: there is nothing to make invalid.
        return sent, None
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis reports an exception group
        return sent, str(exc)
    return sent, None


@pytest.mark.slow
def test_no_input_makes_a_server_error_or_breaks_the_schema(fuzz_target: dict[str, Any]) -> None:
    # One loop over the operations rather than schemathesis' pytest plugin (which breaks on pytest 9):
    # every failure of every operation is collected, then reported together.
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_target["app"])
    headers = {"Authorization": f"Bearer {fuzz_target['key']}"}
    failures: list[str] = []
    operations = 0
    examples = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            sent, error = _fuzz(operation, mode, headers)
            examples += sent
            if error is not None:
                failures.append(f"{operation.label} ({mode.value}): {error}")
    print(f"fuzzed {operations} operations with {examples} requests, {len(failures)} failing")
    assert operations >= 30
    assert not failures, "\n\n".join(failures)
