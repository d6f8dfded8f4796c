"""The API's dialects: one package per family of clients, each a thin mapping onto `preftune.service`.

- `native`:    preftune's own routes (`/v1/files`, `/v1/fine-tunes`, `/v1/keys`, `/v1/evaluations`,
               `/v1/fine-tunes/{id}/curves.png`), for preftune's
               SDK, CLI and console.
- `openai`:    the `openai` client (`/v1/fine_tuning/jobs`, `/v1/chat/completions`, `/v1/models`,
               `/v1/deployments`).
- `together`:  the `together` SDK and CLI (its upload handshake, `/v1/fine-tunes` in Together's
               shapes, `/v1/finetune/download`).
- `fireworks`: the `fireworks-ai` SDK and Fireworks' REST API (`/v1/accounts/{account_id}/...`).

A dialect maps requests, responses, ids, states (`dialects/states.py`, one map per dialect)
and errors; it never owns a rule of the domain. Routes declare the caller and session once
(`api.deps.CallerDep`, `SessionDep`, ...) and list through one helper (`api.pagination`).
Where two dialects share a path (Together and native both speak `/v1/fine-tunes`), the
dialect's routes are `DialectRoute`s and answer only the requests their dialect recognises
(`dialects/select.py`); everything else falls through to the native route.

The order below is the order of `app.include_router`: the routes of a dialect that shares
paths with the native one come before it.
"""

from __future__ import annotations

# (module, prefix): modules with a `router` (or a list `routers`), optionally `startup(app)` / `shutdown(app)`.
DIALECT_ROUTERS: list[tuple[str, str]] = [
    ("preftune.api.dialects.uploads", "/v1"),
    ("preftune.api.dialects.together.routes", "/v1"),
    ("preftune.api.dialects.native.files", "/v1"),
    ("preftune.api.dialects.native.fine_tunes", "/v1"),
    ("preftune.api.dialects.native.keys", "/v1"),
    ("preftune.api.dialects.openai.jobs", "/v1"),
    ("preftune.api.dialects.fireworks.routes", "/v1"),
    ("preftune.api.dialects.native.evaluations", "/v1"),
    ("preftune.api.dialects.native.curves", "/v1"),
]
# Present only where their dependencies are (the inference engine).
OPTIONAL_DIALECT_ROUTERS: list[tuple[str, str]] = [
    ("preftune.api.dialects.fireworks.serving", "/v1"),
    ("preftune.api.dialects.openai.inference", "/v1"),
]
