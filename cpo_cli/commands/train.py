"""`cpo train` (not available yet: filled in by its issue)."""

from __future__ import annotations

from cpo_cli.errors import NotAvailableError


def train() -> None:
    """Not available yet in this version of cpo."""
    raise NotAvailableError("`cpo train` is not available yet in this version of cpo")
