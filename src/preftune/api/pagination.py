"""One pagination helper for every dialect: the list envelope and the cursor over a list in memory.

The service pages database lists itself (`service.common.Page`, newest first, `after` = the last
id of the previous page); `list_response` wraps such a page, or any complete list, in the
`{"object": "list", "data", "has_more", "first_id", "last_id"}` envelope. `page_after` cuts a
list the API assembled itself (OpenAI's merged events, checkpoints) at a cursor; `every_page`
walks a service list to its end, for dialects whose clients get everything at once (Together,
Fireworks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from preftune.errors import NotFoundError

T = TypeVar("T")


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def _id(item: Any) -> str | None:
    value = getattr(item, "id", None)
    return value if isinstance(value, str) else None


def list_response(
    data: Sequence[T], *, has_more: bool = False, last_id: str | None = None
) -> ListResponse[T]:
    """The envelope around `data`; `last_id` defaults to the last item's id (the next page's `after`)."""
    items = list(data)
    return ListResponse[T](
        data=items,
        has_more=has_more,
        first_id=_id(items[0]) if items else None,
        last_id=last_id if last_id is not None else (_id(items[-1]) if items else None),
    )


def page_after(
    items: Sequence[T],
    after: str | None,
    limit: int,
    *,
    what: str,
    where: str = "",
    id_of: Callable[[T], str | None] = _id,
) -> ListResponse[T]:
    """Items after the one whose id is `after` (all from the start without it), at most `limit`.

    An `after` that names no item is a 404 naming `after`: a cursor from another list or owner
    must not silently restart the listing.
    """
    start = 0
    if after is not None:
        ids = [id_of(item) for item in items]
        if after not in ids:
            raise NotFoundError(f"after: {what} {after!r} not found{where}", param="after")
        start = ids.index(after) + 1
    page = list(items[start : start + limit])
    return list_response(page, has_more=start + limit < len(items))


def every_page(
    fetch: Callable[[str | None], Any], *, cursor: Callable[[Any], str | None] = _id
) -> Iterator[Any]:
    """Every item of a service list: `fetch(after)` returns a `service.common.Page`; the next page
    starts after `cursor(last item)` (its id by default)."""
    after: str | None = None
    while True:
        page = fetch(after)
        yield from page.data
        if not page.has_more or not page.data:
            return
        after = cursor(page.data[-1])
