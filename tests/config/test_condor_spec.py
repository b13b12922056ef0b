"""The condor section's model: the worker's config text, the token's travel, redaction."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vfarm
from tests.cc_modules.test_render_hostile import HOSTILE, condor_lines, validated
from vfarm.config import condor as condor_spec
from vfarm.config.loader import ConfigError, load_file, load_text

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "condor.yaml"


def test_issue_example_validates_and_renders() -> None:
    config = load_file(EXAMPLE)
    section = condor_spec.for_instance(config.sections["condor"], EXAMPLE.parent)
    token = (EXAMPLE.parent / "pool.token").read_text().strip()
    assert section["token"] == token and "token-file" not in section
    spec = condor_spec.parse(section)
    assert (spec.collector, spec.retirement_time, spec.join_timeout) == ("cm.example.org:9618", 3600, 300)
    text = condor_spec.render(spec, "i-0abc")
    assert text.splitlines()[1:] == [
        "use ROLE: Execute",
        "CONDOR_HOST = cm.example.org",
        "COLLECTOR_HOST = cm.example.org:9618",
        "CCB_ADDRESS = $(COLLECTOR_HOST)",
        "NUM_SLOTS = 1",
        "NUM_SLOTS_TYPE_1 = 1",
        "SLOT_TYPE_1 = 100%",
        "SLOT_TYPE_1_PARTITIONABLE = True",
        "EXECUTE = /scratch/condor",
        "MAXJOBRETIREMENTTIME = 3600",
        'START = (TRUE) && (MY.VfarmVerdict =?= "ok" || MY.VfarmVerdict =?= "degraded")',
        'VfarmInstanceId = "i-0abc"',
        f'VfarmVersion = "{vfarm.__version__}"',
        'VfarmVerdict = "pending"',
        'Site = "T2_IT_Torino"',
        "STARTD_ATTRS = $(STARTD_ATTRS) VfarmInstanceId VfarmVersion VfarmVerdict Site",
        "MASTER_ATTRS = $(MASTER_ATTRS) VfarmInstanceId",
        "include ifexist : /run/vfarm/condor-verdict.conf",
    ]
    assert token not in text
    assert condor_spec.redact(section)["token"] == "***"


def test_port_durations_and_static_slots() -> None:
    section = {"central-manager": "[fd00::5]:9620", "token": "a.b.c", "slots": "static", "retirement-time": "2h", "ccb": False,
               "config": {"ENABLE_IPV6": False}, "attributes": {"Cores": 4, "Quoted": 'say "hi"'}}
    text = condor_spec.render(condor_spec.parse(section), "i-1")
    assert "COLLECTOR_HOST = fd00::5:9620" in text or "COLLECTOR_HOST = [fd00::5]:9620" in text
    assert "CCB_ADDRESS" not in text and "NUM_SLOTS" not in text
    assert "MAXJOBRETIREMENTTIME = 7200" in text
    assert 'Quoted = "say \\"hi\\""' in text and "Cores = 4" in text and "ENABLE_IPV6 = False" in text


def test_instance_id_attribute_is_ours() -> None:
    with pytest.raises(ConfigError, match="VfarmInstanceId is set by vfarm"):
        load_text("condor:\n  central-manager: cm\n  token: a.b.c\n  attributes: {VfarmInstanceId: x}\n")


def test_token_file_relative_to_config_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.token").write_text("not a token\n")
    cfg = tmp_path / "sub" / "farm.yaml"
    cfg.write_text("condor:\n  central-manager: cm\n  token-file: t.token\n")
    with pytest.raises(ConfigError) as caught:
        load_file(cfg)
    assert str(caught.value) == f"{cfg}:3:15: condor: {tmp_path}/sub/t.token does not hold an IDTOKEN (three base64url parts joined by dots)"


# --- what validates, render writes -----------------------------------------------------------

BASE: dict[str, Any] = {"central-manager": "cm.example.org", "token": "a.b.c"}


def problems(section: dict[str, Any]) -> list[str]:
    """`vfarm validate`'s lines for a condor section (f.yaml), [] when it validates."""
    try:
        load_text(yaml.safe_dump({"condor": section}, sort_keys=False), "f.yaml")
    except ConfigError as err:
        return [str(p) for p in err.problems]
    return []


def render_refusal(section: dict[str, Any]) -> str:
    with pytest.raises(condor_spec.UnsafeValue) as caught:
        condor_spec.render(condor_spec.parse(section), "i-1")
    return str(caught.value)


@pytest.mark.parametrize(("extra", "where"), [
    ({"config": {"include": "x"}}, "5:5"),
    ({"config": {"If": "x"}}, "5:5"),
    ({"config": {"ELSE": "x"}}, "5:5"),
    ({"attributes": {"error": 1}}, "5:5"),
    ({"attributes": {"parent": 1}}, "5:5"),
    ({"attributes": {"IsNt": 1}}, "5:5"),
    ({"execute": "/data/$(HOSTNAME)"}, "4:12"),
    ({"start": "TRUE \\\u3000"}, "4:10"),  # HTCondor's blanks are not only space and tab
    ({"config": {"SUSPEND": "FALSE \\\u00a0"}}, "5:14"),
])
def test_validate_refuses_what_render_refuses(extra: dict[str, Any], where: str) -> None:
    """Each of these once validated and then failed the worker's handler: check now calls render's
    own rules and reports render's reason, at the key or value."""
    section = {**BASE, **extra}
    assert problems(section) == [f"f.yaml:{where}: condor: {render_refusal(section)}"]


CONDOR_NAMES = sorted(condor_spec.CONFIG_KEYWORDS | condor_spec.CLASSAD_KEYWORDS) + [
    "Site", "VFARM_K", "a.b", "NUM_CPUS", "ENABLE_IPV6", "VfarmWorkerType", "STARTD_ATTRS", "MASTER_ATTRS", "START",
    "EXECUTE", "COLLECTOR_HOST", "CONDOR_HOST", "CCB_ADDRESS", "NUM_SLOTS", "SLOT_TYPE_1_PARTITIONABLE",
    "MAXJOBRETIREMENTTIME", *condor_spec.VFARM_ATTRIBUTES]
NAME = st.one_of(st.sampled_from(CONDOR_NAMES).flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper(), n.swapcase()])),
                 st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,12}", fullmatch=True))
PLAIN = st.one_of(st.sampled_from(["TRUE", "x", "T2_IT_Torino", "$(X)", "a\\b"]), st.integers(), st.booleans(),
                  st.floats(allow_nan=False, allow_infinity=False), st.from_regex(r"[ -~]{0,10}", fullmatch=True))
VALUE = st.one_of(PLAIN, st.sampled_from(HOSTILE), st.text(max_size=8), st.text(max_size=6).map(lambda t: t + "\\"))
DURATION = st.one_of(st.integers(-5, 100_000), st.from_regex(r"-?[0-9]{1,3}(\.[0-9]{1,8})?[smh]?", fullmatch=True))
FIELDS = {
    "ccb": st.booleans(), "slots": st.sampled_from(["partitionable", "static"]),
    "execute": st.sampled_from(["/srv/x", "/data/$(HOSTNAME)", "/srv/a\\", "/x\u3000"]) | VALUE.map(lambda v: f"/srv/{v}"),
    "start": VALUE, "attributes": st.dictionaries(NAME, VALUE, min_size=1, max_size=2),
    "config": st.dictionaries(NAME, VALUE, min_size=1, max_size=2), "retirement-time": DURATION, "join-timeout": DURATION,
}
# A few fields at a time: with all of them, nearly every section fails somewhere and tests nothing.
SECTION = st.lists(st.sampled_from(sorted(FIELDS)), max_size=3, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({**{k: st.just(v) for k, v in BASE.items()}, **{k: FIELDS[k] for k in keys}}))
SETTING = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*) = (.*)")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(SECTION)
def test_what_validates_renders_and_keeps_vfarms_settings(data: dict[str, Any]) -> None:
    """Whatever `vfarm validate` passes, render writes (no UnsafeValue on the worker); in what it
    writes no name vfarm sets is set twice, in any spelling, and each duration stays above 0."""
    section = validated("condor", data)
    if section is None:
        return
    lines = condor_lines(section)
    assert lines is not None, (data, render_refusal(section))
    names = [m[1].lower() for m in map(SETTING.fullmatch, lines) if m]
    own = condor_lines({k: v for k, v in section.items() if k not in ("attributes", "config")}) or []
    for ours in {m[1].lower() for m in map(SETTING.fullmatch, own) if m}:
        assert names.count(ours) == 1, (data, ours, lines)
    values = {m[1]: m[2] for m in map(SETTING.fullmatch, lines) if m}
    assert int(values["MAXJOBRETIREMENTTIME"]) > 0
    assert condor_spec.parse(section).join_timeout > 0


# --- vfarm's own names ------------------------------------------------------------------------

VFARMS = "(VfarmInstanceId, VfarmVerdict, VfarmVersion)"


@pytest.mark.parametrize(("extra", "message"), [
    ({"attributes": {"vfarminstanceid": "i-spoofed"}},
     f"vfarminstanceid is VfarmInstanceId (HTCondor's names ignore case), which is set by vfarm {VFARMS}"),
    ({"attributes": {"VFARMVERDICT": "ok"}}, f"VFARMVERDICT is VfarmVerdict (HTCondor's names ignore case), which is set by vfarm {VFARMS}"),
    ({"config": {"VfarmInstanceId": '"i-spoofed"'}}, f"VfarmInstanceId is set by vfarm {VFARMS}"),
    ({"config": {"VfarmVersion": '"9"'}}, f"VfarmVersion is set by vfarm {VFARMS}"),
    ({"config": {"STARTD_ATTRS": "Site"}}, "STARTD_ATTRS is set by vfarm: use attributes: (vfarm adds each one to it) instead"),
    ({"config": {"EXECUTE": "/scratch"}}, "EXECUTE is set by vfarm: use execute: instead"),
    ({"config": {"start": "FALSE"}}, "start is START (HTCondor's names ignore case), which is set by vfarm: use start: instead"),
    ({"config": {"MaxJobRetirementTime": 0}},
     "MaxJobRetirementTime is MAXJOBRETIREMENTTIME (HTCondor's names ignore case), which is set by vfarm: use retirement-time: instead"),
    ({"config": {"master_attrs": "Site"}}, "master_attrs is MASTER_ATTRS (HTCondor's names ignore case), which is set by vfarm"),
    ({"attributes": {"COLLECTOR_HOST": "evil.example.org"}}, "COLLECTOR_HOST is set by vfarm: use central-manager: instead"),
    ({"attributes": {"CCB_ADDRESS": "evil.example.org"}}, "CCB_ADDRESS is set by vfarm: use ccb: instead"),
    ({"attributes": {"Num_Slots": 8}}, "Num_Slots is NUM_SLOTS (HTCondor's names ignore case), which is set by vfarm: use slots: instead"),
])
def test_attributes_and_config_cannot_set_vfarms_names(extra: dict[str, Any], message: str) -> None:
    """Their lines come after vfarm's (config last), and HTCondor keeps a name's last value: each
    of these once overrode what vfarm writes. Refused at the key, whatever its case."""
    assert problems({**BASE, **extra}) == [f"f.yaml:5:5: condor: {message}"]


def test_vfarms_names_are_the_names_render_writes() -> None:
    """The refused names come from render's text: every `NAME =` line of the default section
    (which writes the most) is refused in both keys; the hints name only such names, and every
    knob but MASTER_ATTRS (no key sets it) and the three attributes has one."""
    written = [m[1] for m in map(SETTING.fullmatch, condor_spec.render(condor_spec.parse(BASE), "i-1").splitlines()) if m]
    assert set(condor_spec.written_names(BASE).values()) == set(written)
    for name in written:
        for group in ("attributes", "config"):
            assert len(problems({**BASE, group: {name.lower(): "1"}})) == 1, (group, name)
    assert set(condor_spec.VFARM_KNOB_KEYS) == set(written) - {"MASTER_ATTRS", *condor_spec.VFARM_ATTRIBUTES}


def test_a_knob_vfarm_does_not_write_for_the_section_stays_the_sites() -> None:
    """Without ccb vfarm writes no CCB_ADDRESS, with static slots no slot knobs: the site may."""
    section = {**BASE, "ccb": False, "slots": "static", "config": {"CCB_ADDRESS": "ccb.example.org", "NUM_SLOTS": 4}}
    assert problems(section) == []
    text = condor_spec.render(condor_spec.parse(section), "i-1")
    assert "CCB_ADDRESS = ccb.example.org\n" in text and "NUM_SLOTS = 4\n" in text


def test_site_settings_the_docs_and_tests_use_still_validate() -> None:
    section = {**BASE, "attributes": {"Site": "T2_IT_Torino", "VfarmWorkerType": "large", "Cores": 4},
               "config": {"ENABLE_IPV6": False, "NUM_CPUS": 1, "STARTD_NOCLAIM_SHUTDOWN": 1200, "SUSPEND": False, "CONTINUOUS": "TRUE"}}
    assert problems(section) == []
    assert condor_lines(section) is not None


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("0.5", 1), ("0.9s", 1), ("0.0000001", 1), ("0.1m", 6), ("1.5m", 90), ("2h", 7200), (3600, 3600)])
def test_durations_are_whole_seconds_rounded_up(value: Any, seconds: int) -> None:
    """A fraction of a second is a second: what validates as more than 0 stays more than 0 (a
    MAXJOBRETIREMENTTIME of 0 has a graceful drain evict running jobs)."""
    section = {**BASE, "retirement-time": value, "join-timeout": value}
    assert problems(section) == []
    spec = condor_spec.parse(section)
    assert (spec.retirement_time, spec.join_timeout) == (seconds, seconds)
    assert f"MAXJOBRETIREMENTTIME = {seconds}\n" in condor_spec.render(spec, "i-1")


@pytest.mark.parametrize("value", ["-0.5", "0", "-0.0000001", "0.0s"])
def test_durations_of_0_or_less_stay_refused(value: str) -> None:
    found = problems({**BASE, "retirement-time": value, "join-timeout": value})
    assert found == ["f.yaml:4:20: condor: retirement-time must be more than 0 seconds", "f.yaml:5:17: condor: join-timeout must be more than 0 seconds"]
