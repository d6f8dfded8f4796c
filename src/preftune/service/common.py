"""Small shared helpers of the service: ids, the clock, cursor pages and the resource-name rule."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

from preftune.errors import InvalidRequestError

T = TypeVar("T")

RESOURCE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_PAGE = 1000


def now() -> float:
    return time.time()


def new_id(prefix: str) -> str:
    """`prefix-` and 24 random base32-ish characters (lower case, URL-safe, sortable by nothing)."""
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass
class Page(Generic[T]):
    """One page of a cursor-paginated list (newest first); pass `last_id` as `after` for the next."""

    data: list[T]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        last = self.data[-1] if self.data else None
        return getattr(last, "id", None) if last is not None else None


def check_limit(limit: int, param: str = "limit") -> int:
    if limit < 1 or limit > MAX_PAGE:
        raise InvalidRequestError(f"{param} must be between 1 and {MAX_PAGE} (got {limit})", param=param)
    return limit


def check_resource_name(name: str, param: str = "name") -> str:
    if not RESOURCE_NAME_RE.match(name):
        raise InvalidRequestError(
            f"{param} {name!r} is not a valid name: use 1-63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. orca-pairs-v2)",
            param=param,
            code="invalid_name",
        )
    return name
