"""The `scale` section at validate time: what a live cycle would otherwise be the first to find
(reserved tags, handlers, a missing token file, integral floats), and no noise after a bad cloud."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfarm.config import scale as scale_spec
from vfarm.config.loader import ConfigError, load_text

ONE = "scale:\n  name: f\n  max-vms: 3\n"
EC2 = ONE + "  cloud: {type: ec2, image-id: ami-1, instance-type: m5.large, %s}\n"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl\n"


def errors_of(text: str, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "f.yaml", base_dir=base_dir)
    return [str(p) for p in caught.value.problems]


def test_integral_floats_are_read_as_the_integers_the_schema_took() -> None:
    local = ONE.replace("max-vms: 3", "max-vms: 3.0") + "  cloud: {type: local, memory: 2048.0, vcpus: 2.0}\n"
    assert errors_of(local + "  min-vms: 5.0\n") == ["f.yaml:5:12: scale: min-vms (5) is larger than max-vms (3)"]
    assert errors_of(local + "  disruption-budget: 4.0\n") == ["f.yaml:5:22: scale: disruption-budget (4) is larger than max-vms (3)"]
    typed = local + "  types:\n    - {name: big, cpus: 4.0, memory: 8192.0, cloud: {memory: 4096.0}}\n"
    spec = scale_spec.parse(load_text(typed, "f.yaml").sections["scale"])
    assert spec.types[0].memory == 8192 and spec.types[0].cpus == 4
    # A backend writes the settings with str(): 2048, never 2048.0.
    assert spec.cloud == {"type": "local", "memory": 2048, "vcpus": 2} and spec.types[0].cloud == {"memory": 4096}
    assert all(type(v) is int for v in (*spec.cloud.values(), *spec.types[0].cloud.values()) if not isinstance(v, str))
    assert scale_spec.memory_mb(8192.0) == 8192


@pytest.mark.parametrize("key", ["aws:team", "AWS:Team", "vfarm:end", "vfarm:managed", "Vfarm:farm", "vfarm:", "", "k" * 129])
def test_ec2_tags_refuse_reserved_and_overlong_keys(key: str) -> None:
    assert errors_of(EC2 % f'tags: {{"{key}": x}}') == [
        f"f.yaml:4:71: scale.cloud.tags.{key}: bad name: expected a tag key of 1 to 128 characters, not starting with aws: (EC2's own) or vfarm: (vfarm's own)"]


def test_ec2_tags_keep_to_ec2s_limits() -> None:
    assert load_text(EC2 % f'tags: {{team: physics, "{"k" * 128}": "{"v" * 256}", awsome: x, "site:vfarm": y}}')
    assert errors_of(EC2 % f'tags: {{team: "{"v" * 257}"}}') == ["f.yaml:4:77: scale.cloud.tags.team: longer than 256 characters"]
    many = ", ".join(f"t{i}: x" for i in range(46))  # with vfarm's own up to 5, over EC2's 50
    assert errors_of(EC2 % f"tags: {{{many}}}") == ["f.yaml:4:70: scale.cloud.tags: must have at most 45 entries, got 46"]


def test_openstack_properties_refuse_every_vfarm_key_in_plain_words() -> None:
    cloud = ONE + "  cloud: {type: openstack, image: a, flavor: b, properties: {%s: x}}\n"
    for key in ("vfarm:farm", "vfarm:type", "VFARM:cloud"):
        assert errors_of(cloud % key) == [
            f"f.yaml:4:62: scale.cloud.properties.{key}: bad name: expected a metadata key of 1 to 255 characters, not starting with vfarm: (vfarm's own)"]
    assert load_text(cloud % "site")


@pytest.mark.parametrize("value", ["imbed", "include", "include=", "include=ftp://h.example.org/v", "include=https://",
                                   "include=https://h.example.org/a b", "Embed"])
def test_a_clouds_handlers_take_what_vfarm_build_takes(value: str) -> None:
    for cloud in ("{type: local, handlers: '%s'}", "{type: openstack, image: a, flavor: b, handlers: '%s'}"):
        problems = errors_of(ONE + f"  cloud: {cloud % value}\n")
        assert len(problems) == 1 and problems[0].endswith(
            "scale.cloud.handlers: expected embed, baked or include=URL_BASE (an http:// or https:// URL), got (a secret: not shown)"), problems
    problems = errors_of(EC2 % f"handlers: '{value}'")
    assert len(problems) == 1 and "scale.cloud.handlers: expected embed, baked or include=URL_BASE" in problems[0]


def test_the_handlers_vfarm_build_takes_pass() -> None:
    for value in ("embed", "baked", "include=https://h.example.org/vfarm/1.0", "include=http://u:p@10.0.0.1:8080/h"):
        assert load_text(EC2 % f"handlers: '{value}'")


def test_pool_token_file_is_read_at_validate_time(tmp_path: Path) -> None:
    text = ONE + "  cloud: {type: local}\n  pool: {collector: cm.example.org, token-file: %s}\n"
    assert errors_of(text % "nope.token", tmp_path) == [f"f.yaml:5:49: scale: cannot read token file {tmp_path / 'nope.token'}: No such file or directory"]
    (tmp_path / "bad.token").write_text("not a token\n")
    assert errors_of(text % "bad.token", tmp_path) == [
        f"f.yaml:5:49: scale: {tmp_path / 'bad.token'} does not hold an IDTOKEN (three base64url parts joined by dots)"]
    (tmp_path / "good.token").write_text(TOKEN)
    assert load_text(text % "good.token", "f.yaml", base_dir=tmp_path)
    assert load_text(text % "nope.token", "f.yaml")  # text without a file: nothing to read it from


def test_a_bad_cloud_leaves_out_what_depends_on_it() -> None:
    one = ONE + "  cloud: {type: ec2, image-id: a, instance-type: m5, region: ''}\n  types:\n    - {name: large, cpus: 4, cloud: {instance-type: x}}\n"
    assert errors_of(one) == ["f.yaml:4:62: scale.cloud.region: must not be empty"]
    assert errors_of(one.replace("cloud: {instance-type: x}", "clouds: [site]")) == ["f.yaml:4:62: scale.cloud.region: must not be empty"]
    hybrid = ONE + ("  clouds:\n    - {name: site, type: openstack, image: a, flavor: b}\n"
                    "    - {name: aws, type: ec2, image-id: a, instance-type: m5, region: ''}\n"
                    "  types:\n    - {name: large, cpus: 4, cloud: {flavor: x}, clouds: [site]}\n")
    assert errors_of(hybrid) == ["f.yaml:6:70: scale.clouds[1].region: must not be empty"]
    # Without a bad cloud the same types are checked.
    assert errors_of(one.replace(", region: ''", "").replace("instance-type: x", "flavor: x")) == [
        "f.yaml:6:46: scale: flavor: not a setting a worker type of cloud type ec2 can set (it can: image-id, instance-type)"]


def test_a_cloud_without_type_gets_one_message() -> None:
    assert errors_of(ONE + "  cloud: {image: x, flavor: y}\n") == ["f.yaml:4:10: scale.cloud: missing required key 'type'"]
    assert errors_of(ONE + "  clouds:\n    - {name: site, image: x}\n") == ["f.yaml:5:7: scale.clouds[0]: missing required key 'type'"]


def test_local_memory_in_megabytes_and_durations_as_numbers() -> None:
    text = ONE + "  cloud: {type: local, memory: 2048}\n  waiting-time: 0.5\n  idle-time: 1.0\n  boot-timeout: '0.5'\n"
    text += "  types:\n    - {name: small, cpus: 1, cloud: {memory: 4096}}\n"
    spec = scale_spec.parse(load_text(text, "f.yaml").sections["scale"])
    assert (spec.cloud["memory"], spec.types[0].cloud["memory"], spec.waiting_time, spec.idle_time, spec.boot_timeout) == (2048, 4096, 0.5, 1.0, 0.5)
    assert errors_of(ONE + "  cloud: {type: local, memory: 2048.5}\n") == [
        "f.yaml:4:32: scale.cloud.memory: expected a memory size in MB, or like 2G or 2048M, got 2048.5"]
    assert errors_of(ONE + "  cloud: {type: local, memory: 0}\n") == ["f.yaml:4:32: scale.cloud.memory: must be >= 1, got 0"]
    assert errors_of(ONE + "  cloud: {type: local}\n  boot-timeout: 0.0\n") == ["f.yaml:5:17: scale: boot-timeout must be longer than zero"]
    assert errors_of(ONE + "  cloud: {type: local}\n  idle-time: -0.5\n") == [
        "f.yaml:5:14: scale.idle-time: expected a duration in seconds (0 to 31536000, a year), got -0.5"]


@pytest.mark.parametrize("written", ["0.001", "0", "0.0", "'0.5s'", "0.99"])
def test_check_every_under_a_second_is_refused(written: str) -> None:
    """Each cycle queries the collector, the schedd and the cloud: a period of 0.001 s is a busy loop."""
    shown = written.strip("'")
    assert errors_of(ONE + f"  cloud: {{type: local}}\n  check-every: {written}\n") == [
        f"f.yaml:5:16: scale: check-every must be at least 1 second (each cycle queries the pool and the cloud), got {shown}"]


@pytest.mark.parametrize("written", ["1", "1.0", "1s", "15", "1m"])
def test_check_every_of_a_second_or_more_is_taken(written: str) -> None:
    spec = scale_spec.parse(load_text(ONE + f"  cloud: {{type: local}}\n  check-every: {written}\n", "f.yaml").sections["scale"])
    assert spec.check_every >= 1
