"""The config loader and `vfarm validate`: positions, every problem at once, exact messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vfarm.cli import main as cli
from vfarm.config.loader import MAX_BYTES, ConfigError, load_file, load_text

HERE = Path(__file__).resolve().parents[1]  # tests/
BAD = sorted((HERE / "bad").glob("*.yaml"))
EXAMPLES = sorted((HERE.parent / "examples").glob("*.yaml"))


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "f.yaml")
    return [str(p) for p in caught.value.problems]


def test_there_are_at_least_30_bad_files() -> None:
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_gives_its_exact_message(path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE.parent)
    rel = path.relative_to(HERE.parent)
    assert cli.main(["validate", "-q", str(rel)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == path.with_suffix(".err").read_text()
    for line in out.err.splitlines():
        assert line.startswith(f"{rel}:"), line


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_valid(path: Path) -> None:
    config = load_file(path)
    assert config.sections
    assert not config.warnings


@pytest.mark.integration
def test_validate_command_as_a_process(tmp_path: Path) -> None:
    good, bad = HERE.parent / "examples" / "torino.yaml", tmp_path / "bad.yaml"
    bad.write_text("localfs:\n  parts:\n    home: 101\n")
    vfarm = [sys.executable, "-m", "vfarm"]
    ok = subprocess.run([*vfarm, "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stderr == ""
    failed = subprocess.run([*vfarm, "validate", str(good), str(bad)], capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stderr == f"{bad}:3:11: localfs.parts.home: must be <= 100, got 101\n"
    assert "Traceback" not in failed.stderr


def test_all_problems_at_once_sorted_by_position() -> None:
    problems = errors_of("localfs:\n  parts:\n    data: 10\n  vg: 'a b'\ncvmfs:\n  instal: true\n")
    assert [p.split(": ")[0] for p in problems] == ["f.yaml:3:5", "f.yaml:4:7", "f.yaml:6:3"]
    assert "did you mean 'install'?" in problems[2]


def test_short_and_long_forms_read_alike() -> None:
    short = load_text("localfs:\n  parts:\n    home: 50\n    home-mount: /srv/home\n    swap: 100\n")
    long = load_text("localfs:\n  parts:\n    home: {size: 50%VG, mount: /srv/home}\n    swap: {size: 100%FREE, fs: swap}\n")
    from vfarm.config.localfs import parse

    assert parse(short.sections["localfs"]) == parse(long.sections["localfs"])


def test_positions_of_keys_and_values() -> None:
    config = load_text("#multiple-config\nlocalfs:\n  parts:\n    home:   50\n")
    assert config.where(("localfs", "parts", "home")) == (4, 13)
    assert config.where(("localfs", "parts", "home"), at_key=True) == (4, 5)
    assert config.where(("localfs", "parts", "nothing", "deeper")) == (4, 5)


def test_first_line_is_optional_and_keys_stay_as_written() -> None:
    config = load_text("cvmfs:\n  local:\n    CVMFS_USE_GEOAPI: yes\n")
    assert config.sections == {"cvmfs": {"local": {"CVMFS_USE_GEOAPI": True}}}


def test_file_too_large(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("#multiple-config\n" + "#" * MAX_BYTES)
    with pytest.raises(ConfigError) as caught:
        load_file(big)
    assert str(caught.value) == f"{big}:1:1: file is larger than 256 KiB: not a vfarm config"


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing.yaml:1:1: cannot read: No such file or directory"):
        load_file(tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"localfs:\n\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin.yaml:2:1: not UTF-8 text"):
        load_file(binary)
    binary.write_bytes(b"localfs:\n  parts: {home: 50} # caf\xc3\xa9 \xe9\n")
    with pytest.raises(ConfigError, match=r"bin.yaml:2:28: not UTF-8 text"):  # the column of the bad byte, counted in characters
        load_file(binary)


def test_small_aliases_are_fine_but_recursion_is_not() -> None:
    text = "cvmfs:\n  local:\n    repositories: &r [a.cern.ch]\n  repository:\n    a.cern.ch: {CVMFS_REPOSITORIES: *r}\n"
    assert load_text(text).sections["cvmfs"]["repository"]["a.cern.ch"] == {"CVMFS_REPOSITORIES": ["a.cern.ch"]}
    assert errors_of("a: &a [x, *a]\n") == ["f.yaml:1:4: an alias refers to the collection that contains it"]


def test_warning_does_not_fail(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "warn.yaml"
    path.write_text("localfs:\n  parts:\n    cvmfs: 20\ncvmfs:\n  local:\n    http-proxy: DIRECT\n    cache-base: /srv/cvmfs\n")
    assert cli.main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert err == f"{path}:7:17: warning: cvmfs: cache-base /srv/cvmfs is on none of the localfs parts (/var/lib/cvmfs): the cvmfs part would go unused\n"


def test_sections_limit_what_a_handler_accepts() -> None:
    text = "cvmfs:\n  install: true\n"
    with pytest.raises(ConfigError, match="unknown section 'cvmfs'.*expected one of: localfs"):
        load_text(text, "part.ccfg", sections={"localfs"})


CM = "condor:\n  central-manager: cm.example.org\n  token: aaa.bbb.ccc\n"


@pytest.mark.parametrize(
    ("escape", "shown"),
    [
        ("\\n", "U+000A (line feed)"), ("\\r", "U+000D (carriage return)"), ("\\t", "U+0009 (tab)"), ("\\x00", "U+0000 (null)"),
        ("\\e", "U+001B (escape)"), ("\\x7f", "U+007F (delete)"), ("\\N", "U+0085 (next line)"), ("\\x9b", "U+009B (C1 control)"),
        ("\\L", "U+2028 (line separator)"), ("\\P", "U+2029 (paragraph separator)"), ("\\u200e", "U+200E (left-to-right mark)"),
        ("\\u202e", "U+202E (right-to-left override)"), ("\\u2066", "U+2066 (left-to-right isolate)"), ("\\u2069", "U+2069 (pop directional isolate)"),
    ],
)
def test_control_characters_are_refused_in_every_value_and_key(escape: str, shown: str) -> None:
    assert errors_of(CM + f'  start: "TRUE{escape}"\n') == [f"f.yaml:4:10: condor.start: control character {shown} is not allowed"]
    assert errors_of(CM + f'  config:\n    "A{escape}B": 1\n') == [f"f.yaml:5:5: condor.config: a key holds control character {shown}: not allowed"]
    # In a secret: named, never shown.
    problems = errors_of(f'condor:\n  central-manager: cm.example.org\n  token: "eyJhbGc.payload.S3cret{escape}"\n')
    assert problems == [f"f.yaml:3:10: condor.token: control character {shown} is not allowed"]


def test_a_block_scalar_is_refused_and_tab_free_text_passes() -> None:
    assert errors_of(CM + "  start: |\n    TRUE\n") == ["f.yaml:4:10: condor.start: control character U+000A (line feed) is not allowed"]
    assert load_text(CM + "  start: 'TRUE && (Memory > 1024)'\n").sections["condor"]["start"] == "TRUE && (Memory > 1024)"


@pytest.mark.parametrize(("raw", "where", "shown"), [("\x00", "3:10", "U+0000 (null)"), ("\x07", "3:10", "U+0007 (bell)"), ("\x7f", "3:10", "U+007F (delete)")])
def test_characters_yaml_refuses_in_the_text_are_located(raw: str, where: str, shown: str) -> None:
    assert errors_of(f"check:\n  # note\n  message{raw}: x\n") == [f"f.yaml:{where}: control character {shown} is not allowed in a config file"]


@pytest.mark.parametrize("depth", [52, 600, 100_000])
def test_deep_nesting_is_refused_while_composing(depth: int) -> None:
    assert errors_of("a: " + "[" * depth + "]" * depth + "\n") == ["f.yaml:1:54: nesting deeper than 50 levels"]
    assert errors_of("a:\n" + "".join("  " * i + "- \n" for i in range(1, depth if depth < 1000 else 600))) != []


def test_aliases_cannot_nest_deeper_than_the_text() -> None:
    levels = ["a0: &a0 " + "[" * 40 + "1" + "]" * 40]
    levels += [f"a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40 for i in range(1, 5)]
    assert errors_of("\n".join(levels) + "\n") == ["f.yaml:1:19: nesting deeper than 50 levels"]


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("1:30", "1:30 is a base-60 number in YAML 1.1"),
        ("010", "010 is an octal number in YAML 1.1 (a leading zero)"),
        ("-07", "-07 is an octal number in YAML 1.1 (a leading zero)"),
        ("0x32", "0x32 is not a decimal number"),
        ("0b101", "0b101 is not a decimal number"),
        ("0o17", "0o17 is a number in YAML 1.2 but text in YAML 1.1"),
        ("1_000", "1_000 has a digit separator (_) that YAML 1.1 drops"),
        ("1e3", "1e3 is a number in YAML 1.2 but text in YAML 1.1"),
        ("1:30.5", "1:30.5 is a base-60 number in YAML 1.1"),
    ],
)
def test_yaml_1_1_numbers_never_change_silently(written: str, why: str) -> None:
    fix = f'write the number in plain decimal, or quote it ("{written}") if it is text'
    assert errors_of(f"check:\n  timeout: {written}\n") == [f"f.yaml:2:12: check.timeout: {why}: {fix}"]
    # Where any text is welcome, the number would otherwise be written in place of the text.
    assert errors_of(f"cvmfs:\n  local:\n    max-retries: {written}\n") == [f"f.yaml:3:18: cvmfs.local.max-retries: {why}: {fix}"]
    assert load_text(f"cvmfs:\n  local:\n    max-retries: '{written}'\n").sections["cvmfs"]["local"]["max-retries"] == written


YAML12_REFUSED = ('%YAML 1.2: vfarm reads YAML 1.1, where a bare yes, no, on or off is true or false: '
                  'remove the directive, and quote each value meant as text ("on")')


@pytest.mark.parametrize("directives", ["%YAML 1.2\n", "%TAG !e! tag:example.org,2000:\n%YAML 1.2\n"])
def test_a_yaml_1_2_directive_is_refused_never_read_as_1_1(directives: str) -> None:
    # YAML 1.2 reads `on` as text; read as 1.1 it would silently be true.
    text = f"#multiple-config\n{directives}---\ncvmfs:\n  install: on\n  local: {{repositories: alice.cern.ch, http-proxy: DIRECT}}\n"
    line = directives.count("\n") + 1
    assert errors_of(text) == [f"f.yaml:{line}:1: {YAML12_REFUSED}"]
    assert errors_of(text.replace("%YAML 1.2", "%YAML 2.0")) == [f"f.yaml:{line}:1: {YAML12_REFUSED.replace('1.2:', '2.0:', 1)}"]
    assert errors_of(text.replace("%YAML 1.2", "%YAML 1.0")) == [f"f.yaml:{line}:1: {YAML12_REFUSED.replace('1.2:', '1.0:', 1)}"]
    # The version vfarm reads, said or not, is read as before.
    for same in (text.replace("%YAML 1.2", "%YAML 1.1"), text.replace("%YAML 1.2\n", "")):
        assert load_text(same).sections["cvmfs"]["install"] is True


def test_plain_numbers_read_as_both_yaml_versions_read_them() -> None:
    config = load_text(CM + "  attributes: {A: +12, B: .5, C: 1.5e+1, D: -0, E: 7}\n")
    assert config.sections["condor"]["attributes"] == {"A": 12, "B": 0.5, "C": 15.0, "D": 0, "E": 7}


def test_huge_numbers_and_unreadable_values_are_located() -> None:
    assert errors_of("check:\n  timeout: " + "7" * 5000 + "\n") == ["f.yaml:2:12: check.timeout: a number of 5000 digits is too large"]
    assert errors_of("check:\n  timeout: !!int '" + "7" * 5000 + "'\n") == ["f.yaml:2:12: check.timeout: a number of 5000 digits is too large"]
    assert errors_of("localfs:\n  parts:\n    home: 1.0e+999\n") == ["f.yaml:3:11: localfs.parts.home: 1.0e+999 is too large"]
    assert errors_of("localfs:\n  parts:\n    home: .inf\n") == ["f.yaml:3:11: localfs.parts.home: infinity is not a valid value"]
    assert errors_of("check:\n  timeout: !!int 'twelve'\n") == ["f.yaml:2:12: cannot read this value as int"]
    assert load_text("check:\n  message: 2024-13-45\n").sections["check"]["message"] == "2024-13-45"  # a date YAML cannot build
    assert errors_of("7" * 5000 + "\n") == ["f.yaml:1:1: a number of 5000 digits is too large"]
    assert errors_of("check:\n  timeout: 1.5\n") == ["f.yaml:2:12: check.timeout: expected a whole number, got 1.5"]


@pytest.mark.parametrize(("value", "kind"), [("!!bool x", "bool"), ("!!bool ''", "bool"), ("!!int ''", "int"), ("!!int '-'", "int"),
                                           ("!!float ''", "float"), ("!!float '+'", "float")])
def test_every_value_an_explicit_tag_cannot_read_is_located(value: str, kind: str) -> None:
    # PyYAML's constructors raise KeyError and IndexError for these, not only ValueError.
    assert errors_of(f"check:\n  timeout: {value}\n") == [f"f.yaml:2:12: cannot read this value as {kind}"]
    assert errors_of(f"%TAG !e! tag:yaml.org,2002:\n---\ncheck:\n  timeout: !e!{value[2:]}\n") == [f"f.yaml:4:12: cannot read this value as {kind}"]


def test_a_plain_equals_sign_is_text_and_an_unknown_tag_is_refused() -> None:
    assert load_text("check:\n  message: =\n").sections == {"check": {"message": "="}}
    assert load_text(CM + "  attributes: {A: =}\n").sections["condor"]["attributes"] == {"A": "="}
    assert errors_of("check:\n  message: !foo x\n") == ["f.yaml:2:12: YAML syntax: could not determine a constructor for the tag '!foo'"]


@pytest.mark.parametrize(("written", "shown"), [
    ("2024", '2024 (YAML reads a bare 2024 as a number: quote it, "2024", if it is text)'),
    ("1.50", '1.50 (YAML reads a bare 1.50 as a number: quote it, "1.50", if it is text)'),
    ("null", "null"), ("~", "~"), ("", "nothing"),
])
def test_a_number_or_null_where_text_was_expected_is_shown_as_written(written: str, shown: str) -> None:
    farm = "a farm name (letters, digits, . _ -, at most 63 characters)"
    col = 9 if written else 8
    assert errors_of(f"scale:\n  name: {written}\n  max-vms: 1\n  cloud: {{type: local}}\n") == [f"f.yaml:2:{col}: scale.name: expected {farm}, got {shown}"]
    assert errors_of(f"check:\n  message: {written}\n") == [f"f.yaml:2:{col + 3}: check.message: expected a string, got {shown}"]
    # Where a number is what was expected, no hint to quote it.
    assert errors_of("check:\n  timeout: 1.5\n") == ["f.yaml:2:12: check.timeout: expected a whole number, got 1.5"]


def test_a_bare_yes_or_no_for_text_says_how_to_write_it() -> None:
    hint = '(YAML reads a bare off as false: quote it, "off", if it is text)'
    assert errors_of(CM + "  start: off\n") == [f"f.yaml:4:10: condor.start: expected a string, got off {hint}"]
    assert load_text(CM + "  ccb: no\n").sections["condor"]["ccb"] is False


@pytest.mark.parametrize(
    "text",
    [
        "condor:\n  central-manager: cm.example.org\n  token: 'S3cret.S3cret.S3cret!'\n",
        "cvmfs:\n  package-repository:\n    yum: 'http://user:S3cret@repo.example.org/ x'\n",
        "cvmfs:\n  package-repository:\n    gpg-key: 'ftp://:S3cret@repo.example.org/key'\n",
        "cvmfs:\n  local:\n    http-proxy: 'http://user:S3cret@squid.example.org'\n",
        "cvmfs:\n  local:\n    http-proxy: 'http://:S3cret@squid.example.org'\n",
        "cvmfs:\n  local:\n    http-proxy: 'http://u:S3c/ret#x@squid.example.org:31x'\n",
        "cvmfs:\n  local:\n    http-proxy: [[DIRECT, 'http://:S3cret@squid.example.org:99999']]\n",
        "scale:\n  name: f\n  max-vms: 1\n  cloud: {type: ec2, image-id: a, instance-type: b, endpoint-url: 'ftp://k:S3cret@ec2.example.org'}\n",
        "scale:\n  name: f\n  max-vms: 1\n  cloud: {type: ec2, image-id: a, instance-type: b, endpoint-url: 'http://k:S3cret@ec2.example.org/ x'}\n",
        "scale:\n  name: f\n  max-vms: 1\n  cloud: {type: ec2, image-id: a, instance-type: b, endpoint-url: \"http://k:S3cret@ec2.example.org/\\n\"}\n",
    ],
)
def test_a_bad_secret_bearing_value_is_never_shown(text: str) -> None:
    problems = errors_of(text)
    assert problems and not any("S3cret" in p for p in problems), problems


@pytest.mark.integration
def test_the_bundled_loader_matches_patterns_on_the_whole_value(tmp_path: Path) -> None:
    """The handlers validate on the instance with the same loader and schemas, bundled, with only
    PyYAML and jsonschema: a trailing newline passes no pattern there either."""
    from vfarm.mime_builder import bundle

    (tmp_path / "localfs_handler.py").write_text(bundle.bundle_handler("localfs"))
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import localfs_handler as h\n"
        "config = importlib.import_module(h._P + '.config.loader')\n"
        "print(config.Validator({'pattern': '^/[a-z]*$'}).is_valid('/home'), config.Validator({'pattern': '^/[a-z]*$'}).is_valid('/home\\n'))\n"
        "try:\n"
        "    config.load_text('localfs:\\n  parts:\\n    data: {size: 10, mount: /var/../etc}\\n', 'part', {'localfs'})\n"
        "except config.ConfigError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "True False",
        "part:3:11: localfs: part 'data' would be mounted over the system folder /etc (/var/../etc): choose another mount point",
    ]


@pytest.mark.parametrize(
    ("mount", "problem"),
    [
        ("/tmp/..", "over / (/tmp/..) "), ("/.", "over / (/.) "), ("/var/../etc", "over the system folder /etc (/var/../etc)"),
        ("/proc", "over the system folder /proc"), ("/var", "over the system folder /var"), ("/lib64", "over the system folder /lib64"),
        ("/usr/local", "on /usr/local, inside the system folder /usr"), ("/sys/fs/x/..", "on /sys/fs, inside the system folder /sys (/sys/fs/x/..)"),
        ("/srv/../boot", "over the system folder /boot (/srv/../boot)"),
        # symlinks into /run on Debian and EL: refused by name, mount would follow them
        ("/var/run", "over the system folder /var/run, a link to /run"), ("/var/lock", "over the system folder /var/lock, a link to /run/lock"),
        ("/var/./run/x", "on /var/run/x, inside the system folder /var/run (/var/./run/x), a link to /run"),
        ("/var/lock/vfarm", "on /var/lock/vfarm, inside the system folder /var/lock, a link to /run/lock"),
    ],
)
def test_mount_points_are_normalised_and_kept_off_the_system(mount: str, problem: str) -> None:
    assert errors_of(f"localfs:\n  parts:\n    data: {{size: 10, mount: {mount}}}\n") == [
        f"f.yaml:3:11: localfs: part 'data' would be mounted {problem}: choose another mount point"
    ]


def test_folders_beside_the_links_into_run_are_fine() -> None:
    text = "localfs:\n  parts:\n    a: {size: 10, mount: /var/runner}\n    b: {size: 10, mount: /var/locks}\n    c: {size: 10, mount: /srv/var/run}\n"
    assert load_text(text).sections["localfs"]


@pytest.mark.parametrize(
    ("name", "why"),
    [("snapshots", "starting with 'snapshot'"), ("snapshot", "starting with 'snapshot'"), ("pvmove", "starting with 'pvmove'"),
     ("pvmove_data", "starting with 'pvmove'")]
    + [(f"data{s}", f"containing '{s}'") for s in ("_cdata", "_cmeta", "_corig", "_mimage", "_mlog", "_pmspare", "_rimage", "_rmeta", "_tdata",
                                                  "_tmeta", "_vorigin", "_vdata", "_cpool", "_cvol", "_wcorig", "_imeta", "_iorig")]
    + [("x_rimage_1", "containing '_rimage'"), ("a_tmeta_b", "containing '_tmeta'")],
)
def test_names_lvm2_reserves_are_refused_at_the_part(name: str, why: str) -> None:
    """lvcreate refuses them on the instance, after the parts before them were created."""
    assert errors_of(f"localfs:\n  parts:\n    home: 10\n    {name}: {{size: 10, mount: /srv/x}}\n") == [
        f"f.yaml:4:5: localfs: part '{name}': lvm2 reserves LV names {why}: choose another name"
    ]


def test_names_like_the_reserved_ones_are_fine() -> None:
    text = "localfs:\n  parts:\n    my_snapshot: {size: 10, mount: /a}\n    tmeta: {size: 10, mount: /b}\n    data_mirror: {size: 10, mount: /c}\n"
    assert load_text(text).sections["localfs"]


def test_xfs_labels_and_sizes_keep_to_mkfs_xfs() -> None:
    """xfs labels have at most 12 characters (ext4 16); mkfs.xfs refuses file systems under
    300 MiB: a size written in bytes is checked here, a percentage only on the instance."""
    def part(fields: str) -> str:
        return f"localfs:\n  parts:\n    data: {{{fields}, mount: /data}}\n"

    assert errors_of(part("size: 10, fs: xfs, label: abcdefghijklm")) == [
        "f.yaml:3:38: localfs: part 'data': an xfs label has at most 12 characters, 'abcdefghijklm' has 13"
    ]
    for fields in ("size: 10, fs: xfs, label: abcdefghijkl", "size: 10, label: abcdefghijklmnop", "size: 10, fs: ext4, label: abcdefghijklmnop",
                   "size: 300M, fs: xfs", "size: 0.3G, fs: xfs", "size: 1G, fs: xfs", "size: 1%VG, fs: xfs", "size: 1, fs: xfs",
                   "size: 100M", "size: 100M, fs: ext4"):
        assert load_text(part(fields)).sections["localfs"], fields
    for size in ("299M", "0.29G", "307199K", "1K"):
        assert errors_of(part(f"size: {size}, fs: xfs")) == [
            f"f.yaml:3:18: localfs: part 'data' is xfs of {size}: mkfs.xfs refuses a file system under 300 MiB"
        ]


def test_a_custom_package_repository_needs_its_key_or_trusted() -> None:
    """Without either, apt is told `signed-by=` a key never written (yum: gpgcheck=1 without a
    gpgkey): apt-get update fails, and the broken source stays for every later apt run."""
    for kind in ("apt", "yum"):
        assert errors_of(f"cvmfs:\n  package-repository:\n    {kind}: http://mirror.example.org/cvmfs\n") == [
            f"f.yaml:3:5: cvmfs: package-repository {kind} has no gpg-key: add gpg-key (the URL of its signing key), "
            "or trusted: true for an unsigned test repository"
        ]
        for extra in ("gpg-key: http://mirror.example.org/key.asc", "trusted: true"):
            assert load_text(f"cvmfs:\n  package-repository:\n    {kind}: http://m.example.org/c\n    {extra}\n").sections
    assert len(errors_of("cvmfs:\n  package-repository:\n    apt: http://m.example.org/a\n    yum: http://m.example.org/y\n    trusted: false\n")) == 2


def test_normalised_mount_points_are_what_the_instance_uses() -> None:
    from vfarm.config import localfs as localfs_spec

    text = "localfs:\n  parts:\n    data: {size: 10, mount: /srv/./x/../data}\n    scratch: 10\n    scratch-mount: /var/tmp/.\n"
    text += "    etc: {size: 1, mount: /etcetera}\n"
    spec = localfs_spec.parse(load_text(text).sections["localfs"])
    assert [p.mount for p in spec.parts] == ["/srv/data", "/var/tmp", "/etcetera"]
    same = errors_of("localfs:\n  parts:\n    tmp: 10\n    data: {size: 10, mount: /var/../tmp/.}\n")
    assert same == ["f.yaml:4:5: localfs: parts 'tmp' and 'data' are both mounted on /tmp"]
    devices = errors_of("localfs:\n  parts:\n    home: 10\n  devices: [/dev/vdb, /dev/./../dev/vdc, /dev/..]\n")
    assert devices == ["f.yaml:4:23: localfs: device /dev/./../dev/vdc is not under /dev", "f.yaml:4:42: localfs: device /dev/.. is not under /dev"]


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("cm-.example.org", "expected a host name or address"), ("-cm.example.org", "expected a host name or address"),
        ("a" * 64 + ".org", "expected a host name or address"), (".".join(["a" * 63] * 4), "the host name is longer than 253 characters"),
        ("10.0.0.256", "10.0.0.256 is not an IPv4 address"), ("10.0.0", "10.0.0 is not an IPv4 address"),
        ("[fe80::1::2]", "fe80::1::2 is not an IPv6 address"), ("[10.0.0.1]:9618", "10.0.0.1 is not an IPv6 address"),
        ("::1:9618:x", "expected a host name or address"), ("cm_1.example.org", "expected a host name or address"),
    ],
)
def test_central_manager_is_a_host_name_or_an_ip_literal(host: str, problem: str) -> None:
    problems = errors_of(f'condor:\n  central-manager: "{host}"\n  token: aaa.bbb.ccc\n')
    assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize(
    ("written", "collector"),
    [("cm.example.org", "cm.example.org:9618"), ("10.0.0.5:9620", "10.0.0.5:9620"), ("[2001:db8::5]:9619", "[2001:db8::5]:9619"), ("[::1]", "[::1]:9618")],
)
def test_collector_puts_ipv6_in_brackets(written: str, collector: str) -> None:
    from vfarm.config import condor as condor_spec

    section = load_text(f'condor:\n  central-manager: "{written}"\n  token: aaa.bbb.ccc\n').sections["condor"]
    assert condor_spec.parse(section).collector == collector


def test_a_bare_ipv6_collector_is_refused_for_brackets() -> None:
    # fe80::1:9618 is an address, or fe80::1 with a port: brackets say which.
    assert errors_of('condor:\n  central-manager: "fe80::1:9618"\n  token: aaa.bbb.ccc\n') == [
        "f.yaml:2:20: condor: write an IPv6 address in brackets, [fe80::1:9618] or [fe80::1:9618]:9618"
    ]


def test_cvmfs_names_are_fully_qualified() -> None:
    assert errors_of("cvmfs:\n  local:\n    repositories: alice.cern.ch,cms\n") == [
        "f.yaml:3:19: cvmfs: repository 'cms' is not a fully qualified repository name like alice.cern.ch"
    ]
    label = "a" * 64
    problems = errors_of(f"cvmfs:\n  domain:\n    {label}.ch: {{server-url: http://s/cvmfs/@fqrn@}}\n")
    assert problems == [f"f.yaml:3:5: cvmfs.domain.{label}.ch: bad name: expected a domain like cern.ch"]
    assert load_text("cvmfs:\n  local:\n    repositories: [alice.cern.ch, sft.cern.ch]\n")


def test_sizes_are_exact_and_bounded() -> None:
    from vfarm.config import sizes

    assert sizes.parse_bytes("1.5T") == 3 * 2**39 and sizes.parse_bytes("0.5K") == 512 and sizes.parse_bytes("8192P") == sizes.MAX_BYTES
    for text in ("8193P", "9" * 400 + "G", "1" * 5000):
        with pytest.raises(ValueError, match="is too large"):
            sizes.parse_bytes(text)
    # As a config's size refuses them (is 20GB 20*10**9 bytes or 20 GiB?), so do --vg-size and --extent-size.
    for text, meant in (("20GB", "20G"), ("20gib", "20G"), ("4 MiB", "4M"), ("1.5kB", "1.5K")):
        with pytest.raises(ValueError, match=f"\\(write {meant}: binary units, without B, as lvcreate -L\\)$"):
            sizes.parse_bytes(text)


def test_plan_refuses_a_volume_group_size_of_hundreds_of_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("localfs:\n  parts:\n    home: 50\n")
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error: its usage, then one line
        cli.main(["plan", str(config), "--vg-size", "9" * 400 + "G"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("vfarm plan: error: argument --vg-size: size 99999999999999999999... is too large (at most 8 EiB)")
    assert "Traceback" not in err and len(err) < 300


def test_durations_are_bounded_where_they_are_used() -> None:
    from vfarm.config import sizes

    assert sizes.parse_seconds("365d") == sizes.MAX_SECONDS
    for value in ("366d", "9" * 400, 10**30, "1e999"):
        with pytest.raises(ValueError):
            sizes.parse_seconds(value)
    assert errors_of(CM + "  retirement-time: 400d\n") == ["f.yaml:4:20: condor: retirement-time must be at most 31536000 seconds (365 days)"]
    assert errors_of(CM + "  join-timeout: 99999999999\n") == ["f.yaml:4:17: condor.join-timeout: must be <= 31536000, got 99999999999"]
    scale = "scale:\n  name: f\n  max-vms: 1\n  cloud: {type: local}\n"
    assert errors_of(scale + "  idle-time: 9999999999999999d\n") == ["f.yaml:5:14: scale: idle-time must be at most 31536000 seconds (a year)"]
    assert errors_of(scale + "  pool: {collector: '10.1.2.300:9618'}\n") == ["f.yaml:5:21: scale: 10.1.2.300 is not an IPv4 address"]
