"""The domain: owners and API keys, files, jobs (state machine, events, metrics, checkpoints),
fine-tuned models and deployments. The only writer of the database.

Every function takes a SQLAlchemy `Session` (and, for user-facing calls, the caller's
`owner_id`), commits its own unit of work, and raises `preftune.errors` exceptions; another
owner's resource is a `NotFoundError` with the same message as a missing one.
"""
