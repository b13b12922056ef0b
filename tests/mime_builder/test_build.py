"""`vfarm build`: part order per mode, payloads, attachments, gzip, size limit, determinism and
one-line errors for bad input. (Through real cloud-init: tests/test_build_cloudinit.py.)"""

from __future__ import annotations

import email
import gzip
import re
import sys
from pathlib import Path
from typing import Optional

import pytest
import yaml

from vfarm.cli.main import main as vfarm
from vfarm.config import loader as configuration
from vfarm.config import sections
from vfarm.mime_builder import cloudconfig, mime
from vfarm.mime_builder.limits import EC2_LIMIT

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/torino.yaml"
BIG = 1 << 20


@pytest.fixture(scope="module")
def torino() -> configuration.Config:
    return configuration.load_file(EXAMPLE)


def parts_of(data: bytes) -> list[tuple[str, Optional[str], bytes]]:
    """(content type, file name, decoded payload) of each part."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    parts = []
    for part in email.message_from_bytes(data).walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes), (part.get_content_type(), payload)
            parts.append((part.get_content_type(), part.get_filename(), payload))
    return parts


def test_embed_order_and_payloads(torino: configuration.Config) -> None:
    built = mime.build(torino, max_size=BIG, gzip="never")
    names = [(p.content_type, p.filename) for p in built.parts]
    assert names == [
        ("text/part-handler", "vfarm-library.py"),
        ("text/part-handler", "localfs_handler.py"),
        ("text/part-handler", "cvmfs_handler.py"),
        ("text/localfs-config", "localfs-config.ccfg"),
        ("text/cvmfs-config", "cvmfs-config.ccfg"),
        ("text/cloud-config", "vfarm-check.cfg"),  # the final check's part, last
    ]
    assert parts_of(built.data) == [(p.content_type, p.filename, p.payload) for p in built.parts]
    for name in ("localfs", "cvmfs"):
        payload = next(p.payload for p in built.parts if p.filename == f"{name}-config.ccfg").decode()
        assert payload.startswith(f"{name}:\n  ")
        # what the handler on the instance reads is what the admin wrote
        assert configuration.load_text(payload, f"{name}-config.ccfg", sections={name}).sections == {name: torino.sections[name]}


def test_every_section_part_loads_back_on_the_instance_as_it_validated() -> None:
    """A string quoted because YAML 1.2 reads it as a number (`"1e3"`, as validate asks) stays
    quoted in the part: the instance's loader refuses it plain, and the worker would power off."""
    from vfarm.cc_modules import handling

    config = configuration.load_text(
        "#multiple-config\nlocalfs:\n  parts:\n    home: 50\n    data: {size: 10%VG, mount: /data, label: \"1e3\"}\n"
        "cvmfs:\n  install: true\n  local:\n    repositories: alice.cern.ch\n    http-proxy: DIRECT\n    CVMFS_MEMCACHE_SIZE: \"0o17\"\n",
        "quoted.yaml")
    built = mime.build(config, handlers="baked", gzip="never")
    for part in built.parts:
        name = part.content_type.removeprefix("text/").removesuffix("-config")
        if name in config.sections:
            assert handling.load_part(name, part.payload.decode(), part.filename) == config.sections[name]


def test_localfs_goes_before_cvmfs_whatever_the_file_order() -> None:
    text = EXAMPLE.read_text()
    localfs, cvmfs = text.split("cvmfs:\n  install")
    swapped = configuration.load_text("#multiple-config\ncvmfs:\n  install" + cvmfs + localfs.replace("#multiple-config\n", ""), "x.yaml")
    assert list(swapped.sections) == ["cvmfs", "localfs"]
    built = mime.build(swapped, handlers="baked")
    assert [p.filename for p in built.parts] == ["localfs-config.ccfg", "cvmfs-config.ccfg"]


def test_include_and_pin(torino: configuration.Config) -> None:
    built = mime.build(torino, handlers="include=https://h.example.org/vfarm/")
    first = built.parts[0]
    urls = b"https://h.example.org/vfarm/localfs_handler.py\nhttps://h.example.org/vfarm/cvmfs_handler.py\nhttps://h.example.org/vfarm/vfarm-check.py\n"
    assert (first.content_type, first.payload) == ("text/x-include-url", urls)
    # The check is fetched with the handlers: its part only sets power_state, as in embed.
    assert built.parts[-1].payload == mime.build(torino, max_size=BIG).parts[-1].payload
    assert b"write_files" not in built.parts[-1].payload
    pinned = mime.build(torino, handlers="include=https://h.example.org/vfarm", pin=True)
    loader = pinned.parts[0].payload.decode()
    assert pinned.parts[0].content_type == "text/part-handler" and loader.startswith("#part-handler\n")
    from vfarm.mime_builder import bundle

    digest = bundle.sha256(bundle.bundle_handler("localfs"))
    assert f"# vfarm-pin: {digest} https://h.example.org/vfarm/localfs_handler.py" in loader
    assert f"# vfarm-pin: {bundle.sha256(bundle.bundle_check())} https://h.example.org/vfarm/vfarm-check.py" in loader
    compile(loader, "loader", "exec")
    assert [p.role for p in pinned.parts[1:]] == ["config", "config", "check"]


def test_baked_carries_only_config_parts(torino: configuration.Config) -> None:
    built = mime.build(torino, handlers="baked")
    assert [p.role for p in built.parts] == ["config", "config"] and not built.compressed


def test_same_input_same_bytes(torino: configuration.Config) -> None:
    for handlers in ("embed", "baked", "include=https://h.example.org/v"):
        again = configuration.load_file(EXAMPLE)
        assert mime.build_userdata(torino, handlers=handlers, max_size=BIG) == mime.build_userdata(again, handlers=handlers, max_size=BIG)
    data = mime.build_userdata(torino, handlers="baked", gzip="always")
    assert data[4:8] == b"\0\0\0\0"  # gzip mtime


def test_gzip_whole_payload_only(torino: configuration.Config) -> None:
    small = mime.build(torino, handlers="baked")
    assert not small.compressed and b"MIME-Version: 1.0" in small.data[:200]
    forced = mime.build(torino, handlers="baked", gzip="always")
    assert forced.compressed and gzip.decompress(forced.data) == small.data
    auto = mime.build(torino, handlers="include=https://h.example.org/v")  # over 16384 plain: compressed
    assert auto.compressed == (auto.plain_size > EC2_LIMIT)
    assert all(not p.content_type.startswith("application/") for p in auto.parts)


def test_over_the_limit_says_by_how_much_and_what_helps(torino: configuration.Config) -> None:
    with pytest.raises(mime.BuildError) as err:
        mime.build(torino, gzip="never")
    message = str(err.value)
    assert "over the limit of 16384" in message and "--gzip auto would make it" in message
    # The alternatives are measured, not guessed: baked carries only the config parts.
    baked = len(mime.build(torino, handlers="baked", gzip="always").data)
    assert f"--handlers baked would make it {baked} bytes (an image made with `vfarm image bake`)" in message
    pinned = len(mime.build(torino, handlers="include=https://example.invalid/vfarm", pin=True, gzip="always").data)
    assert f"--handlers include=URL_BASE --pin would make it {pinned} bytes (hosting what `vfarm handlers DIR` writes at URL_BASE)" in message
    with pytest.raises(mime.BuildError, match=r"gzipped user-data is \d+ bytes, \d+ over the limit of 100"):
        mime.build(torino, handlers="baked", gzip="always", max_size=100)
    # A pinned include over the limit measures baked without --pin (baked has nothing to pin).
    with pytest.raises(mime.BuildError, match=f"--handlers baked would make it {baked} bytes"):
        mime.build(torino, handlers="include=https://h.example.org/v", pin=True, gzip="always", max_size=1000)


@pytest.mark.parametrize("name", ['x.sh"\nX-Evil: 1', "x.sh\n\nbody", "é.sh", "tab\there.sh"])
def test_an_attachment_name_that_would_not_read_back_from_its_header_is_refused(tmp_path: Path, name: str) -> None:
    """The file's name is quoted in the part's Content-Disposition: a line break would add headers
    (or end them), and non-ASCII cannot be written there as it is."""
    script = tmp_path / name
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(mime.BuildError, match="only printable ASCII reads back as written"):
        mime.attachment(str(script))
    (tmp_path / "ok 1.sh").write_text("#!/bin/sh\n")
    assert mime.attachment(str(tmp_path / "ok 1.sh")).filename == "ok 1.sh"


@pytest.mark.parametrize("name", ['"a.sh"', 'a"b.sh', "a\\b.sh", " a.sh", "a.sh "])
def test_an_attachment_name_that_the_email_parser_would_change_is_refused(tmp_path: Path, name: str) -> None:
    """Quoted in the header, `"x"` and ` x ` read back as `x`: one part would overwrite another."""
    (tmp_path / name).write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(mime.BuildError, match="do not read back as written") as err:
        mime.attachment(str(tmp_path / name))
    assert repr(name) in str(err.value) and "\n" not in str(err.value)


def test_every_attachment_name_accepted_reads_back_as_written(tmp_path: Path) -> None:
    for char in map(chr, range(0x20, 0x7F)):
        for name in {f"a{char}b", f"{char}a", f"a{char}", char * 2} - {"..", "/a", "a/", "a/b", "//"}:  # no file of those names
            (tmp_path / name).write_text("#!/bin/sh\n")
            try:
                accepted = mime.attachment(str(tmp_path / name))
            except mime.BuildError:
                continue
            data = mime.assemble([mime.Part(accepted.content_type, accepted.filename, accepted.payload, "attachment")])
            assert [filename for _, filename, _ in parts_of(data)] == [name]


@pytest.mark.parametrize("first, second", [("a.sh", '"a.sh"'), ("a.sh", " a.sh "), ('"a.sh"', "a.sh ")])
def test_two_attachments_that_read_back_alike_are_refused(torino: configuration.Config, first: str, second: str) -> None:
    """The duplicate check compares the names cloud-init reads, whatever built the Attachments."""
    attach = [mime.Attachment("text/x-shellscript", name, b"#!/bin/sh\n") for name in (first, second)]
    with pytest.raises(mime.BuildError, match=r"two parts are named a\.sh .*rename the attached file"):
        mime.build(torino, handlers="baked", attach=attach)


def test_attachments(torino: configuration.Config, tmp_path: Path) -> None:
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    cc = tmp_path / "extra.yaml"
    cc.write_text("runcmd: [true]\n")
    handler = tmp_path / "mine.py"
    handler.write_text("def list_types():\n    return ['text/x-mine']\ndef handle_part(*a):\n    pass\n")
    attach = [mime.attachment(str(script)), mime.attachment(f"{cc}:cloud-config"), mime.attachment(f"{handler}:text/part-handler")]
    assert [a.content_type for a in attach] == ["text/x-shellscript", "text/cloud-config", "text/part-handler"]
    built = mime.build(torino, handlers="baked", attach=attach)
    assert [p.filename for p in built.parts] == ["mine.py", "localfs-config.ccfg", "cvmfs-config.ccfg", "hello.sh", "extra.yaml"]
    utf8 = tmp_path / "utf8.sh"
    utf8.write_text("#!/bin/sh\necho 'città'\n")
    built = mime.build(torino, handlers="baked", attach=[mime.attachment(str(utf8))])
    assert b"Content-Transfer-Encoding: base64" in built.data
    assert parts_of(built.data)[-1][2] == utf8.read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "missing.yaml"], "missing.yaml:1:1: cannot read"),
        (["build", "{cloud}"], "not a #multiple-config file"),
        (["build", "{example}", "--handlers", "include=ftp://x"], "is not an http(s) URL"),
        (["build", "{example}", "--handlers", "include=example.org/h"], "is not an http(s) URL"),
        (["build", "{example}", "--handlers", "include=https://h.example.org/v#frag"], "has a query or fragment"),
        (["build", "{example}", "--handlers", "include=https://h.example.org/v?sig=abc", "--pin"], "has a query or fragment"),
        # an `@` past the host is in the query or fragment, not the end of a userinfo
        (["build", "{example}", "--handlers", "include=https://example.org/vfarm?v=1@2"], "has a query or fragment"),
        (["build", "{example}", "--handlers", "include=https://example.org/vfarm#x@y", "--pin"], "has a query or fragment"),
        (["build", "{example}", "--handlers", "include=https://example.org?v=1@2"], "has a query or fragment"),
        (["build", "{example}", "--handlers", "include=https://u:p@example.org/vfarm?v=1@2"], "has a query or fragment"),
        (["build", "{example}", "--handlers", "include=https://h.example.org/v?"], "has a query or fragment"),  # empty, as harmful
        (["build", "{example}", "--handlers", "include=https://h.example.org/v#"], "has a query or fragment"),
        (["build", "{example}", "--handlers", "inline"], "expected embed, baked or include=URL_BASE"),
        (["build", "{example}", "--attach", "{script}:x-nonsense"], "cloud-init has no handler for type text/x-nonsense"),
        (["build", "{example}", "--attach", "{plain}"], "cannot tell the type"),
        (["build", "{example}", "--attach", "nowhere.sh:x-shellscript"], "cannot read nowhere.sh"),
        (["build", "{example}", "--pin"], "--pin needs --handlers include=URL_BASE"),
        (["build", "{example}", "--gzip", "never"], "over the limit of 16384"),
        (["build", "{copy}", "--handlers", "baked", "-o", "{copy}"], "is the config file the user-data is made from"),
        (["build", "{condor}", "--handlers", "baked", "-o", "{token}"], "is condor's token file the user-data is made from"),
        (["build", "{copy}", "--handlers", "baked", "--attach", "{script}", "-o", "{script}"], "is an --attach file the user-data is made from"),
        (["launch", "ec2", "{copy}", "--image-id", "ami-1", "--instance-type", "m5.large", "--handlers", "baked", "--dry-run", "-o", "{copy}",
          "--endpoint-url", "http://127.0.0.1:9", "--region", "us-east-1"], "is the config file the user-data is made from"),
        (["inspect", "missing.bin"], "missing.bin: cannot read"),
        (["inspect", "{badgz}"], "gzip data that does not decompress"),
    ],
)
def test_bad_input_is_one_line_exit_1(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {"cloud": tmp_path / "cloud.yaml", "script": tmp_path / "s.sh", "plain": tmp_path / "notes.txt", "badgz": tmp_path / "bad.gz",
             "copy": tmp_path / "torino.yaml", "condor": tmp_path / "condor.yaml", "token": tmp_path / "pool.token"}
    files["copy"].write_bytes(EXAMPLE.read_bytes())
    for name in ("condor.yaml", "pool.token"):
        (tmp_path / name).write_bytes((EXAMPLE.parent / name).read_bytes())
    files["cloud"].write_text("#cloud-config\nruncmd: [true]\n")
    files["script"].write_text("#!/bin/sh\n")
    files["plain"].write_text("just words\n")
    files["badgz"].write_bytes(b"\x1f\x8b\x08\x00garbage")
    subst = {k: str(v) for k, v in files.items()} | {"example": str(EXAMPLE)}
    argv = [a.format(**subst) for a in args]
    assert vfarm(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1, err
    assert files["copy"].read_bytes() == EXAMPLE.read_bytes()  # nothing written over the config


@pytest.mark.parametrize("password", ["Pw9Secret", "Pw9/Secret", "Pw9#Secret", "Pw9?Secret", "Pw9@Secret"])
def test_include_base_password_may_hold_url_marks(password: str) -> None:
    """The userinfo ends at the last `@` before the path (`pinloader.split_userinfo`): a password's
    `?` or `#` is no query or fragment, and the file names go after the path."""
    mode = mime.parse_handlers(f"include=https://user:{password.replace('/', '%2F')}@h.example.org/vfarm")
    assert mode.url("localfs") == f"https://user:{password.replace('/', '%2F')}@h.example.org/vfarm/localfs_handler.py"


@pytest.mark.parametrize(
    "value",
    [
        "include=https://admin:Pw9 Secret@example.org/h",
        "include=https://admin:Pw9 Secret@example.org/h?x#y",
        "include=ftp://admin:Pw9 Secret@example.org/h",
        "include=https://admin:Pw9/ Secret@example.org/h",
        "include=https://admin:Pw9?Secret@example.org/h?x",
        "include=https://Pw9 Secret@example.org/h",
        "include=admin:Pw9 Secret@example.org/h",
        "includ=https://admin:Pw9 Secret@example.org/h",
    ],
)
def test_no_handlers_refusal_shows_a_password(value: str) -> None:
    """Not even one that a blank cuts in two (redaction ends a URL at a blank)."""
    with pytest.raises(mime.BuildError) as err:
        mime.parse_handlers(value)
    assert "Pw9" not in str(err.value) and "Secret" not in str(err.value) and "***@example.org/h" in str(err.value)


def test_cli_hides_the_password_of_a_handlers_url_with_a_blank(capsys: pytest.CaptureFixture[str]) -> None:
    assert vfarm(["build", str(EXAMPLE), "--handlers", "include=https://admin:Pw9 Secret@example.org/h"]) == 1
    err = capsys.readouterr().err
    assert "'https://admin:***@example.org/h' is not an http(s) URL" in err and len(err.strip().splitlines()) == 1
    assert "Pw9" not in err and "Secret" not in err


def test_cli_writes_file_and_reports_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "user-data"
    assert vfarm(["build", str(EXAMPLE), "--handlers", "baked", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{out}: {out.stat().st_size} bytes (not compressed)" in err and "of the 16384-byte limit" in err
    assert out.stat().st_mode & 0o777 == 0o600
    assert vfarm(["build", str(EXAMPLE), "--handlers", "baked"]) == 0
    assert capsys.readouterr().out.encode() == out.read_bytes()


def test_admin_only_sections_are_not_sent(tmp_path: Path) -> None:
    text = EXAMPLE.read_text() + "check:\n  on-failure: none\n"
    conf = configuration.load_text(text, "farm.yaml")
    built = mime.build(conf, handlers="baked")
    assert [p.filename for p in built.parts] == ["localfs-config.ccfg", "cvmfs-config.ccfg", "check-config.ccfg"]
    assert yaml.safe_load(built.parts[2].payload) == {"check": {"on-failure": "none"}}
    for name in sections.ADMIN_ONLY:
        assert all(not p.filename.startswith(name) for p in built.parts)


def test_the_devices_localfs_takes_are_left_alone_by_cloud_inits_mounts(tmp_path: Path) -> None:
    """A localfs section with `devices` brings a #cloud-config part that drops cloud-init's own
    mount of each (`[DEVICE]`, no mount point: on EC2 it mounts the instance store, ephemeral0, at /mnt after
    the part-handlers made it a PV), after the config parts and before the attachments (an attached
    `mounts` replaces the list, as cloud-init merges); none without `devices`."""
    devices = ["/dev/xvdb", "/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_AWS1:x"]
    config = configuration.load_text(f"localfs:\n  devices: [{', '.join(devices)}]\n  force: true\n  parts:\n    home: 50\n", "ec2.yaml")
    cc = tmp_path / "mine.yaml"
    cc.write_text("runcmd: [true]\n")
    for handlers in ("embed", "baked"):
        built = mime.build(config, handlers=handlers, attach=[mime.attachment(f"{cc}:cloud-config")], max_size=BIG)
        names = [p.filename for p in built.parts]
        assert names.index("localfs-config.ccfg") < names.index("localfs-mounts.cfg") < names.index("mine.yaml"), names
        part = next(p for p in built.parts if p.filename == "localfs-mounts.cfg")
        assert part.content_type == "text/cloud-config" and part.payload.startswith(b"#cloud-config\n")
        assert yaml.safe_load(part.payload) == {"mounts": [[device] for device in devices]}
    # Named as localfs reads them: cloud-init compares the names as written.
    assert yaml.safe_load(cloudconfig.localfs_mounts({"devices": ["/dev//xvdb/"]}) or "") == {"mounts": [["/dev/xvdb"]]}
    plain = configuration.load_text("localfs:\n  parts:\n    home: 50\n", "plain.yaml")
    assert "localfs-mounts.cfg" not in [p.filename for p in mime.build(plain, handlers="baked").parts]


@pytest.mark.parametrize("base,pin,expected", [
    ("https://h.example.org/v", False, None),
    ("http://admin:s3cret@h.example.org/v", False, "include=http://admin:***@h.example.org/v is not https: the handlers travel in clear "
                                                   "and anyone on the path can change what runs as root"),
    ("http://h.example.org/v", True, "include=http://h.example.org/v is not https: the handlers travel in clear (--pin checks their sha256)"),
])
def test_an_include_base_that_is_not_https_is_warned_about(base: str, pin: bool, expected: Optional[str], torino: configuration.Config) -> None:
    """What `vfarm inspect` warns about in the user-data, `vfarm build` says when it writes it (no password)."""
    warnings = mime.build(torino, handlers=f"include={base}", pin=pin).warnings
    if expected is None:
        assert warnings == ()
    else:
        assert [w for w in warnings if expected in w] and not any("s3cret" in w for w in warnings), warnings


@pytest.mark.parametrize("gzip_mode,refused", [("always", True), ("never", False)])
def test_gzipped_user_data_never_goes_to_a_terminal(gzip_mode: str, refused: bool, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code = vfarm(["build", str(EXAMPLE), "--handlers", "baked", "--gzip", gzip_mode])
    captured = capsys.readouterr()
    if refused:
        assert code == 1 and captured.out == ""
        assert "the user-data is gzipped" in captured.err and "stdout is a terminal" in captured.err
    else:
        assert code == 0 and captured.out.startswith("Content-Type: multipart/mixed")


@pytest.mark.parametrize(("base", "why"), [
    ("https://h.example.org:99999/v", "its port is not a number from 1 to 65535"),
    ("https://h.example.org:abc/v", "its port is not a number from 1 to 65535"),
    ("https://h.example.org:0/v", "its port is not a number from 1 to 65535"),
    ("https://:80/v", "it names no host"),
    ("https://user:Pw9Secret@:80/v", "it names no host"),
    ("https://h..example/v", "'h..example' is not a host name"),
    ("https://-h.example/v", "'-h.example' is not a host name"),
    ("http://999.1.1.1/h", "its host: 999.1.1.1 is not an IPv4 address"),
])
def test_an_include_base_no_instance_could_fetch_from_is_refused(base: str, why: str) -> None:
    """A fetch that fails makes cloud-init drop the whole user-data: refused when building."""
    with pytest.raises(mime.BuildError, match=re.escape(why)) as err:
        mime.parse_handlers(f"include={base}")
    assert "Pw9Secret" not in str(err.value)


@pytest.mark.parametrize("base", ["https://h.example.org:8443/v", "http://127.0.0.1:8080/h", "http://[::1]:8080/h", "https://h.example.org./v",
                                  "https://u:p@web_01.site.example/h"])
def test_an_include_base_an_instance_can_fetch_from_is_taken(base: str) -> None:
    assert mime.parse_handlers(f"include={base}").url_base == base


def test_an_attached_power_state_is_named_in_a_warning(tmp_path: Path) -> None:
    config = configuration.load_text("#multiple-config\nlocalfs:\n  parts: {home: 50}\n")
    attached = tmp_path / "pc.cfg"
    attached.write_text("#cloud-config\npower_state: {mode: reboot}\n")
    baked = mime.build(config, handlers="baked", attach=[mime.attachment(str(attached))])
    assert [w for w in baked.warnings if "power_state" in w] == [
        f"--attach {attached}: its power_state acts when cloud-init ends, maybe before the image's final check (run detached) "
        "has written its verdict or powered a failed instance off"]
    for text in ("#cloud-config\nruncmd: [true]\n", "#cloud-config\nwhen: 2001-13-01\n"):  # a bad date: cloud-init's to refuse
        attached.write_text(text)
        assert not [w for w in mime.build(config, handlers="baked", attach=[mime.attachment(str(attached))]).warnings if "power_state" in w]
