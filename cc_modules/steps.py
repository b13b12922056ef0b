"""The one step engine of the instance side.

A module discovers the machine and plans: its plan is a list of typed steps (run a command, write
a file, or a custom step for what is neither), plain data a dry run prints and a test compares.
`apply` is the only code that carries steps out, the same way for every module: in a dry run a
step that changes the system is logged and not done; every step is timed and recorded; the first
failure is recorded and raised (after the step's undo, if it has one), so nothing runs after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from ..files import atomic_write
from ..redaction import redact
from .handling import Context
from .runner import CommandFailed

Undo = Callable[[Context], None]


@dataclass(frozen=True)
class Run:
    """Run ARGV (never a shell string) through the instance's runner."""

    action: str
    argv: list[str]
    env: Optional[dict[str, str]] = None
    timeout: Optional[float] = None
    reads_only: bool = False  # runs in a dry run too, and is never a change
    details: dict[str, Any] = field(default_factory=dict)  # listed and recorded (the part, the size)
    undo: Optional[Undo] = field(default=None, compare=False, repr=False)  # called when it fails

    def listing(self) -> dict[str, Any]:
        return {"action": self.action, **self.details, "argv": self.argv}


@dataclass(frozen=True)
class WriteFile:
    """Write PATH (inside the system root) whole, atomically, with MODE."""

    action: str
    path: str
    content: str = field(repr=False)
    mode: Optional[int] = None  # None: the existing file's mode, else 0644
    secret: bool = False  # the content is never logged, recorded or listed

    def listing(self) -> dict[str, Any]:
        return {"action": self.action, "path": self.path, "bytes": len(self.content)}


@dataclass(frozen=True)
class Custom:
    """A step that is neither a command nor a file (a download, a wait, a choice made at run
    time). RUN returns extra fields for the record; DETAILS are listed and recorded."""

    action: str
    # Returns fields for the record; "changed": False there when it found nothing to do.
    run: Callable[[Context], Optional[dict[str, Any]]] = field(compare=False, repr=False)
    details: dict[str, Any] = field(default_factory=dict)
    changes: bool = True

    def listing(self) -> dict[str, Any]:
        return {"action": self.action, **self.details}


Step = Union[Run, WriteFile, Custom]


@dataclass
class Plan:
    """What a module will do: the steps in order, and notes for the log. No steps: nothing to do."""

    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def actions(self) -> list[str]:
        return [s.action for s in self.steps]

    def listing(self) -> list[dict[str, Any]]:
        return [s.listing() for s in self.steps]


def apply(plan: Plan, ctx: Context) -> bool:
    """Carry out PLAN's steps in order; returns whether anything changed (never in a dry run)."""
    changed = False
    for step in plan.steps:
        started = time.monotonic()
        try:
            fields, did_change = _carry_out(step, ctx)
        except CommandFailed as err:
            ctx.record.step(step.action, False, **_details(step), returncode=err.result.returncode,
                            seconds=round(time.monotonic() - started, 3), error=err.result.summary())
            _undo(step, ctx)
            raise
        except Exception:
            ctx.record.step(step.action, False, **_details(step), seconds=round(time.monotonic() - started, 3))
            _undo(step, ctx)
            raise
        details = {**_details(step), **{f"{k}_" if k in RESERVED else k: v for k, v in fields.items()}}
        ctx.record.step(step.action, True, **details, seconds=round(time.monotonic() - started, 3), changed=did_change)
        changed = changed or did_change
    return changed


# The record's own keys of a step: a custom step's field of that name is kept as NAME_.
RESERVED = ("action", "ok", "seconds", "changed")


def _details(step: Step) -> dict[str, Any]:
    """What the record keeps of STEP: its listing without the action (the record's own key)."""
    return {k: v for k, v in step.listing().items() if k != "action"}


def _carry_out(step: Step, ctx: Context) -> tuple[dict[str, Any], bool]:
    if isinstance(step, Run):
        result = ctx.runner.run(step.argv, env=step.env, timeout=step.timeout, changes=not step.reads_only)
        return {}, not step.reads_only and not result.dry_run
    if isinstance(step, WriteFile):
        if ctx.dry_run:
            shown = "(secret: not shown)" if step.secret else redact(step.content)
            ctx.logger.info("dry-run, not writing %s:\n%s", step.path, shown)
            return {}, False
        atomic_write(ctx.path(step.path), step.content, step.mode)
        ctx.logger.info("wrote %s", step.path)
        return ({} if step.mode is None else {"mode": f"{step.mode:04o}"}), True
    if ctx.dry_run:  # a custom step may change anything: a dry run only names it
        ctx.logger.info("dry-run, not doing: %s", step.action)
        return {"skipped": "dry run"}, False
    fields = dict(step.run(ctx) or {})
    return fields, bool(fields.pop("changed", step.changes))


def _undo(step: Step, ctx: Context) -> None:
    """STEP's undo after it failed; an undo that fails too is logged, never put in place of the
    step's own failure (the reason the handler failed)."""
    if isinstance(step, Run) and step.undo is not None and not ctx.dry_run:
        try:
            step.undo(ctx)
        except Exception as err:  # noqa: BLE001 - the step's failure is the one to report
            ctx.logger.error("undoing %s failed too: %s: %s", step.action, type(err).__name__, err)
