"""Keyset pagination links for the list pages (hosts, VMs, events): the API pages by ``after`` (the last id of
the previous page), so page 1,000 costs what page 1 does; "previous" works from a short trail of earlier cursors
carried in the URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

PAGE_SIZES = (25, 50, 100, 200)
TRAIL_MAX = 50


def qs(**params: Any) -> str:
    """A query string of the params that have a value (``""`` when none has)."""
    clean = {k: v for k, v in params.items() if v not in (None, "", [])}
    return ("?" + urlencode(clean, doseq=True)) if clean else ""


def pager(base: str, filters: dict[str, Any], after: str | None, trail: list[str], nxt: Any) -> dict[str, Any]:
    """Links for keyset pagination: next (the API's cursor), previous (the trail of earlier cursors, ``-``
    standing for the first page), first."""
    out: dict[str, Any] = {"first": None, "prev": None, "next": None}
    if after:
        out["first"] = base + qs(**filters)
        prev_after = trail[-1] if trail else "-"
        out["prev"] = base + qs(**filters, after=None if prev_after == "-" else prev_after,
                                trail=",".join(trail[:-1]) or None)
    if nxt is not None:
        new_trail = [*trail, after or "-"][-TRAIL_MAX:]
        out["next"] = base + qs(**filters, after=str(nxt), trail=",".join(new_trail))
    return out


def parse_trail(value: str | None) -> list[str]:
    return [v for v in value.split(",") if v][-TRAIL_MAX:] if value else []


def page_size(value: str | None, default: int = 50) -> int:
    """The page size asked for, if it is one of ``PAGE_SIZES``; else the default (a bad value is no error)."""
    try:
        n = int(value or default)
    except ValueError:
        return default
    return n if n in PAGE_SIZES else default
