"""vfarm's one error hierarchy: everything it refuses or cannot do, each with one clear reason.

A handler that meets a `VfarmError` records its message as the reason and fails; anything else
is an internal error (recorded with its type, never lost)."""

from __future__ import annotations


class VfarmError(Exception):
    """vfarm cannot do what was asked; the message says why, in one line, with no secret."""


class PlanError(VfarmError):
    """The config cannot be laid out on this machine as it is (sizes, volume groups, packages)."""


class StepError(VfarmError):
    """A step cannot be done safely (a conflict, an unexpected state)."""
