"""Numeric options are argparse types: a count, port, size or extent size out of range is a usage
error (exit 2, argparse's usage and one line naming the option), checked before anything is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vfarm.cli import main as cli
from vfarm.cli.common import whole_number

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "torino.yaml")
FARM = str(Path(__file__).resolve().parents[2] / "examples" / "hybrid.yaml")
EC2 = ["launch", "ec2", EXAMPLE, "--image-id", "ami-1", "--instance-type", "m5.large", "--dry-run"]
OPENSTACK = ["launch", "openstack", EXAMPLE, "--image", "i", "--flavor", "f", "--dry-run"]


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one problem line of a usage error (exit 2) of `vfarm ARGV`."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    problems = [line for line in err.splitlines() if not line.startswith(("usage: ", " "))]
    assert len(problems) == 1, err
    return problems[0]


@pytest.mark.parametrize(("argv", "value", "expected"), [
    (EC2, "0", "expected a whole number of at least 1, got '0'"),
    (EC2, "-1", "expected a whole number of at least 1, got '-1'"),
    (EC2, "two", "expected a whole number, got 'two'"),
    (OPENSTACK, "0", "expected a whole number of at least 1, got '0'"),
    (OPENSTACK, "1_000", "expected a whole number, got '1_000'"),
])
def test_count_below_one_is_a_usage_error(argv: list[str], value: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error([*argv, "-o", str(tmp_path / "u"), "--count", value], capsys)
    assert line.endswith(f"error: argument --count: {expected}")
    assert not (tmp_path / "u").exists()


@pytest.mark.parametrize(("value", "expected"), [
    ("0", "expected a whole number from 1 to 65535, got '0'"),
    ("-1", "expected a whole number from 1 to 65535, got '-1'"),
    ("65536", "expected a whole number from 1 to 65535, got '65536'"),
    ("http", "expected a whole number, got 'http'"),
])
def test_metrics_port_outside_1_to_65535_is_a_usage_error(value: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert usage_error(["scale", FARM, "--metrics-port", value], capsys).endswith(f"error: argument --metrics-port: {expected}")


def test_metrics_port_in_range_parses() -> None:
    for port in ("1", "9100", "65535"):
        argv = ["scale", FARM, "--metrics-port", port]
        assert cli.build_parser(argv).parse_args(argv).metrics_port == int(port)


@pytest.mark.parametrize("command", [["inspect"], ["build"], ["launch", "local"], ["launch", "ec2"], ["launch", "openstack"]])
@pytest.mark.parametrize("value", ["0", "-5", "1k"])
def test_max_size_below_one_is_a_usage_error(command: list[str], value: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error([*command, EXAMPLE, "--max-size", value], capsys)
    rule = "a whole number" if value == "1k" else "a whole number of at least 1"
    assert line.endswith(f"error: argument --max-size: expected {rule}, got '{value}'")


EXTENT_RULE = "expected an LVM extent size: a power of 2 from 512 bytes (like 4M) or a multiple of 128K (like 3M), below 2T"


@pytest.mark.parametrize("value", ["0", "3K", "100K", "1000b", "256b", "1.3M", "2T", "3T"])
def test_extent_size_lvm_refuses_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """vgcreate -s takes a power of 2 of at least a sector, or a multiple of 128 KiB (lvm2's
    metadata format), in 32 bits of sectors: anything else cannot be a volume group's extent size."""
    line = usage_error(["plan", EXAMPLE, "--vg-size", "100G", "--extent-size", value], capsys)
    assert line == f"vfarm plan: error: argument --extent-size: {EXTENT_RULE}; got '{value}'"


@pytest.mark.parametrize(("value", "n_bytes"), [("4M", 4 << 20), ("512b", 512), ("1K", 1024), ("3M", 3 << 20), ("1.5M", 3 << 19),
                                                ("384K", 384 << 10), ("1G", 1 << 30)])
def test_extent_sizes_vgcreate_takes_are_planned(value: str, n_bytes: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", EXAMPLE, "--vg-size", "2T", "--extent-size", value, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vg"]["extent_size"] == n_bytes


@pytest.mark.parametrize(("value", "expected"), [("0", "expected a size above 0, like 100G, got '0'"),
                                                 ("ten", "not a size: 'ten' (expected a number with K, M, G or T, like 20G)")])
def test_vg_size_not_above_zero_is_a_usage_error(value: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert usage_error(["plan", EXAMPLE, "--vg-size", value], capsys) == f"vfarm plan: error: argument --vg-size: {expected}"


def test_vg_size_under_one_extent_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", EXAMPLE, "--vg-size", "1M", "--extent-size", "4M"]) == 1
    assert capsys.readouterr().err == "vfarm: --vg-size 1.00 MiB must hold at least one extent of 4.00 MiB\n"


@pytest.mark.parametrize("text", ["1_000", " 2", "٣", "2.0", "", "1" * 21])
def test_a_whole_number_is_ascii_digits(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="expected a whole number, got"):
        whole_number(1)(text)
    assert whole_number(1)("+7") == 7
