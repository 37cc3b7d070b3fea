"""`cpo eval` (not available yet: filled in by its issue)."""

from __future__ import annotations

from cpo_cli.errors import NotAvailableError


def eval_cmd() -> None:
    """Not available yet in this version of cpo."""
    raise NotAvailableError("`cpo eval` is not available yet in this version of cpo")
