"""The condor section's model: the worker's config text, the token's travel, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

import vfarm
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
        "START = TRUE",
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
