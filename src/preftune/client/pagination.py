"""Cursor pagination: a page of results that can walk the following pages itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)


class Page(Generic[T]):
    """One page (`data`, `has_more`); iterating it yields every item of this and later pages."""

    def __init__(self, data: list[T], has_more: bool, fetch_after: Callable[[str], Page[T]] | None) -> None:
        self.data = data
        self.has_more = has_more
        self._fetch_after = fetch_after

    @property
    def last_id(self) -> str | None:
        return getattr(self.data[-1], "id", None) if self.data else None

    def next_page(self) -> Page[T] | None:
        """The page after this one, or None at the end."""
        if not self.has_more or self._fetch_after is None or self.last_id is None:
            return None
        return self._fetch_after(self.last_id)

    def __iter__(self) -> Iterator[T]:
        page: Page[T] | None = self
        while page is not None:
            yield from page.data
            page = page.next_page()

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Page(data={len(self.data)} items, has_more={self.has_more})"
