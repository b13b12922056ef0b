"""The step engine (cc_modules/steps.py): what it records when a step or its undo goes wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakesystem import FakeRunner
from vfarm.cc_modules import handling, record
from vfarm.cc_modules.runner import CommandFailed
from vfarm.cc_modules.steps import Custom, Plan, Run, apply


def context(tmp_path: Path, **runner: Any) -> handling.Context:
    rec = record.Record("demo", directory=tmp_path / "log")
    return handling.Context(FakeRunner(rec.logger, **runner), rec, tmp_path)


def test_an_undo_that_fails_too_leaves_the_steps_own_failure_to_report(tmp_path: Path) -> None:
    ctx = context(tmp_path, fail=("check",))

    def undo(_ctx: handling.Context) -> None:
        raise FileNotFoundError("the file to put back is gone")

    with pytest.raises(CommandFailed, match="check"):
        apply(Plan([Run("check-config", ["check", "it"], undo=undo)]), ctx)
    ctx.record.close()
    assert "undoing check-config failed too: FileNotFoundError" in (tmp_path / "log/demo.log").read_text()
    assert [(s["action"], s["ok"]) for s in ctx.record.data["steps"]] == [("check-config", False)]


def test_a_custom_steps_field_named_like_the_records_own_is_kept_beside_them(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    step = Custom("wait", lambda _ctx: {"seconds": 12, "ok": "yes", "action": "x", "changed": True}, {})
    assert apply(Plan([step]), ctx) is True
    recorded = ctx.record.data["steps"][0]
    assert recorded["action"] == "wait" and recorded["ok"] is True and recorded["seconds"] != 12
    assert (recorded["seconds_"], recorded["ok_"], recorded["action_"]) == (12, "yes", "x")
    json.dumps(recorded)
