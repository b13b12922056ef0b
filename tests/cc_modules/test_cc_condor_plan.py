"""cc_condor's plan: pure, from facts; a second run writes nothing and restarts nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vfarm.cc_modules import cc_condor
from vfarm.cc_modules.steps import Plan, WriteFile
from vfarm.config import condor as condor_spec
from vfarm.errors import StepError

# The metadata guard has tests of its own (test_metadata_guard.py).
SECTION = {"central-manager": "cm.example.org", "token": "aaa.bbb.ccc", "attributes": {"Site": "T2_IT_Torino"}, "protect-metadata": False}
SPEC = condor_spec.parse(SECTION)


def facts(**changes: Any) -> cc_condor.Facts:
    base: dict[str, Any] = dict(config=None, token=None, installed=True, active=False, execute_exists=False, package_manager="apt-get")
    return cc_condor.Facts(**{**base, **changes})


def actions(plan: Plan) -> list[str]:
    return plan.actions()


def test_first_run_writes_checks_starts_and_waits() -> None:
    plan = cc_condor.plan(SPEC, facts(), "i-1")
    assert actions(plan) == ["write-token", "write-config", "mkdir", "check-config", "start", "wait-join"]
    assert plan.listing()[-1] == {"action": "wait-join", "collector": "cm.example.org:9618", "instance_id": "i-1", "timeout": 300}
    token = plan.steps[0]
    assert isinstance(token, WriteFile) and token.secret and token.mode == 0o600
    shown = repr(plan) + json.dumps(plan.listing())
    assert "aaa.bbb.ccc" not in shown, "the token must not be in what the plan shows (it is logged)"


def test_second_run_changes_nothing() -> None:
    done = facts(config=condor_spec.render(SPEC, "i-1"), token="aaa.bbb.ccc\n", active=True, execute_exists=True)
    assert actions(cc_condor.plan(SPEC, done, "i-1")) == ["wait-join"]


def test_changed_config_restarts() -> None:
    old = facts(config="# old\n", token="aaa.bbb.ccc\n", active=True, execute_exists=True)
    assert actions(cc_condor.plan(SPEC, old, "i-1")) == ["write-config", "check-config", "restart", "wait-join"]


def test_install_when_missing() -> None:
    spec = condor_spec.parse({**SECTION, "install": True, "version": "23.9.6"})
    plan = cc_condor.plan(spec, facts(installed=False), "i-1")
    # The package's own start is held off (masked until reboot at most): it would wait for the end
    # of the cloud-init stage that runs this install. The plan's own start step starts condor.
    assert plan.listing()[:3] == [{"action": "hold-start", "argv": ["systemctl", "mask", "--runtime", "condor"]},
                                  {"action": "install", "argv": ["apt-get", "install", "-y", "--no-install-recommends", "condor=23.9.6*"]},
                                  {"action": "release-start", "argv": ["systemctl", "unmask", "--runtime", "condor"]}]
    assert actions(plan)[-2:] == ["start", "wait-join"]
    with pytest.raises(StepError, match="HTCondor is not installed"):
        cc_condor.plan(SPEC, facts(installed=False), "i-1")
