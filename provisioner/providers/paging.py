"""Every page of a cloud's paged list, or an error: never part of it in silence.

A list cut at a fixed number of pages showed a user with more servers part of them and exit 0; ``list --prune``
then took the rest for "local state only", and create's name check missed a clash. The pages are followed to the
end; only an API that never ends (a next page seen before, or more than PAGE_LIMIT pages) stops it, with an error.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, TypeVar

from ..errors import ProvisionError

T = TypeVar("T")
PAGE_LIMIT = 1000  # pages; far past any account (500,000 servers at Vultr's 500 a page): only a looping API gets here


def every_page(provider: str, what: str, fetch: Callable[[Any], tuple[list[T], Hashable]], first: Hashable = None) -> list[T]:
    """The items of every page: ``fetch(token)`` answers one page's items and the next page's token (falsy: the last)."""
    items: list[T] = []
    token, seen, last = first, {first}, None
    for pages in range(1, PAGE_LIMIT + 1):
        batch, token = fetch(token)
        if not token:
            return items + batch
        if token in seen or (batch and batch == last):  # a cursor it gave before; a page number it did not heed
            raise ProvisionError(f"{provider}: the API answered a page it had answered before while {what}, after "
                                 f"{pages} pages ({len(items)} items); nothing is listed rather than part: try again "
                                 "later, or check --api-url if you set it")
        items += batch
        seen.add(token)
        last = batch
    raise ProvisionError(f"{provider}: the API still had more after {PAGE_LIMIT} pages ({len(items)} items) while "
                         f"{what}; nothing is listed rather than part: check --api-url if you set it")
