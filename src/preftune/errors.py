"""One exception hierarchy for the whole product.

The API maps these to `{"error": {"message", "type", "param", "code"}}` with the
status code below; the CLI prints the message and exits non-zero. A message is
written for a person: it says what is wrong and what to change.
"""

from __future__ import annotations

import errno


class PreftuneError(Exception):
    """Base class. `param` names the field, flag or parameter at fault, if any."""

    status_code: int = 500
    error_type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_dict(self) -> dict[str, str | None]:
        return {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}


class InvalidRequestError(PreftuneError):
    status_code = 400
    error_type = "invalid_request_error"


class DataValidationError(InvalidRequestError):
    """A data file cannot be trained on (the report says why, line by line)."""


class TrainingSpecError(InvalidRequestError):
    """A hyperparameter is out of range or contradicts another."""


class AuthenticationError(PreftuneError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(PreftuneError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(PreftuneError):
    status_code = 404
    error_type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    """A base or fine-tuned model name that resolves to nothing on this machine."""


class ConflictError(PreftuneError):
    status_code = 409
    error_type = "conflict_error"


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413


class TrainingError(PreftuneError):
    """The trainer failed for a reason that is not the user's input."""


class InsufficientStorageError(PreftuneError):
    """The disk is full (or over quota). Nothing was left half-written under a real name; the same
    request (or the job's next attempt) succeeds once space is freed."""

    status_code = 507
    error_type = "server_error"


# How a full disk reads in the messages of libraries that drop the errno (Rust's std::io, SQLite, and
# `torch.save` to a path, whose C++ writer raises a RuntimeError). DCP's writes keep their OSError
# themselves (training/checkpoint.py).
_DISK_FULL_TEXT = (
    "no space left on device",
    "disk quota exceeded",
    "os error 28",
    "database or disk is full",
    "pytorchstreamwriter failed writing file",
)


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc`, or an exception it was raised from, says the disk is full (ENOSPC, EDQUOT)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(current).lower() for text in _DISK_FULL_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


class StorageUnavailableError(PreftuneError):
    """The blob store (an S3 endpoint) cannot be reached or refuses this server's credentials."""

    status_code = 503
    error_type = "storage_unavailable"
