"""The `scale` section of a hybrid farm: `clouds` in priority order, each type's clouds and its
settings there; located one-line errors for what cannot work."""

from __future__ import annotations

import pytest

from vfarm.config import scale as scale_spec
from vfarm.config.loader import ConfigError, load_text

BASE = """\
scale:
  name: f
  max-vms: 4
  clouds:
    - {name: site, type: openstack, image: w, flavor: m1.small, max: 1}
    - {name: aws, type: ec2, image-id: ami-1, instance-type: m5.large}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "f.yaml")
    return [str(p) for p in caught.value.problems]


def test_a_hybrid_section_parses_with_types_named_by_list_or_with_settings() -> None:
    text = BASE + "  types:\n    - {name: small, cpus: 1, clouds: [aws]}\n    - {name: big, cpus: 8, clouds: {site: {flavor: m1.xlarge}, aws: }}\n"
    spec = scale_spec.parse(load_text(text, "f.yaml").sections["scale"])
    assert [(c.name, c.kind, c.max) for c in spec.clouds] == [("site", "openstack", 1), ("aws", "ec2", None)]
    assert spec.clouds[0].settings == {"type": "openstack", "image": "w", "flavor": "m1.small"}
    assert [(p.name, p.cloud) for p in spec.placements] == [("small@aws", {}), ("big@site", {"flavor": "m1.xlarge"}), ("big@aws", {})]
    # `cloud` is the first cloud's settings, for what reads one cloud.
    assert spec.cloud == spec.clouds[0].settings


@pytest.mark.parametrize(("tail", "error"), [
    ("    - {name: site, type: local}\n", "f.yaml:7:14: scale: cloud 'site' is listed twice"),
    ("  cloud: {type: local}\n", "f.yaml:5:5: scale: cloud (one cloud) and clouds (several, in priority order) do not go together: keep one"),
    ("  types:\n    - {name: small, cpus: 1, clouds: {gcp: }}\n", "f.yaml:8:39: scale: cloud 'gcp' is not one of the farm's clouds (site, aws)"),
    ("  types:\n    - {name: small, cpus: 1, clouds: [aws, gcp]}\n", "f.yaml:8:44: scale: cloud 'gcp' is not one of the farm's clouds (site, aws)"),
    ("  types:\n    - {name: small, cpus: 1, clouds: {site: {instance-type: m5.large}}}\n",
     "f.yaml:8:61: scale: instance-type: not a setting a worker type on cloud site (type openstack) can set (it can: image, flavor)"),
    ("  types:\n    - {name: small, cpus: 1, cloud: {flavor: m1.large}}\n",
     "f.yaml:8:46: scale: flavor: not a setting a worker type running on cloud aws (type ec2) can set (it can: image-id, instance-type)"),
    ("  types:\n    - {name: small, cpus: 1, clouds: {}}\n", "f.yaml:8:38: scale.types[0].clouds: must not be empty"),
])
def test_a_bad_hybrid_section_gives_one_located_line(tail: str, error: str) -> None:
    assert errors_of(BASE + tail) == [error]


def test_one_cloud_refuses_what_only_clouds_have() -> None:
    one = "scale:\n  name: f\n  max-vms: 4\n  cloud: {type: local}\n"
    assert errors_of("scale:\n  name: f\n  max-vms: 4\n") == [
        "f.yaml:2:3: scale: the scale section needs cloud (one cloud) or clouds (several, in priority order)"]
    assert errors_of(one.replace("type: local", "type: local, max: 3")) == [
        "f.yaml:4:29: scale: max: only an entry of clouds has one (a farm of one cloud: max-vms bounds it)"]
    assert errors_of(one + "  types:\n    - {name: small, cpus: 1, clouds: [site]}\n") == [
        "f.yaml:6:38: scale: clouds: only a farm that lists clouds has a choice of them"]
    assert errors_of(BASE.replace("name: aws, ", "")) == ["f.yaml:6:7: scale.clouds[1]: missing required key 'name'"]
    assert errors_of(BASE.replace("flavor: m1.small,", "flavor: m1.small, instance-type: x,"))[0].startswith(
        "f.yaml:5:65: scale.clouds[0]: unknown key 'instance-type'")
