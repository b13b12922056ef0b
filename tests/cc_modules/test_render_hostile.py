"""Every file the handlers write, rendered from hostile values and read back by the real parser:
one value stays one value, or the writer refuses it (UnsafeValue). Nothing runs: each corpus
value that tries to run a command touches a marker file, and the marker never appears.

The writers are fed directly (dataclasses.replace, raw sections), bypassing validation: they
must be safe on their own, for a hand-written part or a gap in the schema.

Parsers: HTCondor's own config parser (htcondor2 bindings, in a subprocess with CONDOR_CONFIG at
the rendered file), bash and /bin/sh for the CVMFS .local files, util-linux `findmnt
--fstab --tab-file` (libmount) for fstab, Python's configparser for the yum .repo file (the INI
reader yum itself uses).

CernVM-FS: here, without the client, the bash parse plus the rule transcribed from cvmfs 2.12
options.cc (see cvmfs_spec.render): the file fed line by line to the real /bin/sh followed by
`echo $NAME` per assignment line (BashOptionsManager), the same line split without a shell
(SimpleOptionsParser), and the real /bin/sh evaluating the single-quoted dump that cvmfs_config
evals. The real client reads the same corpus in test_cvmfs_hostile_real.py (`-m cvmfs`).
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from vfarm import files
from vfarm.cc_modules import cc_cvmfs, cc_localfs
from vfarm.cc_modules.steps import WriteFile
from vfarm.config import condor as condor_spec
from vfarm.config import cvmfs as cvmfs_spec
from vfarm.config import localfs as localfs_spec
from vfarm.config.loader import ConfigError, load_text
from vfarm.errors import PlanError
from vfarm.textsafe import UnsafeValue

MARK = "@MARKER@"  # replaced by the test's marker file
HOSTILE = [
    "plain", "two words", "tab\there", "  lead", "trail  ", "a  b", "-1",
    "#comment", "a#b", "x # y",
    "ends\\", "ends\\ ", "ends\\\t", "back\\slash", "\\n literal",
    'dq"uote', "sq'uote", "both'\"",
    f"$(touch {MARK})", "$(DOLLAR)", "$$(X)", "$$", "$ENV(HOME)", f"`touch {MARK}`", "a$b", "$1", "${HOME}",
    f"a;touch {MARK}", f"a|touch {MARK}", f"a && touch {MARK}", "<x>", "(x)",
    f"TRUE\ninclude : /usr/bin/touch {MARK} |", f"x\r\ninclude : /usr/bin/touch {MARK} |", f"x\0\ninclude : /usr/bin/touch {MARK} |",
    f"include : /usr/bin/touch {MARK} |", "@=end", "@end", "use ROLE: Execute",
    "trailing newline\n", "cr\rhere", "nul\0here", "vt\x0bff\x0c", "del\x7f", "nel\x85", "ls\u2028ps\u2029",
    "unicodé ✓", "bidi\u202eevil", "\ufeffbom",
    "-n", "-e x", "-E", "*", "/etc/*", "a?", "[ab]", "http://[::1]:3128", "~root", "{a,b}", "=x=", "x=y",
    f"'; touch {MARK}; '", "\\'", "!event", "%s%n", "x" * 5000,
]


def corpus(marker: Path) -> list[str]:
    return [value.replace(MARK, str(marker)) for value in HOSTILE]


def clean_env(**extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", **extra}


# --- HTCondor ---------------------------------------------------------------------------------

BASE_CONDOR = condor_spec.parse({"central-manager": "cm.example.org", "token": "a.b.c", "config": {"VFARM_TEST_KNOB": "x"},
                                 "attributes": {"VfarmTestAttr": "x"}})
# Read each file with HTCondor's parser: every knob it defines, and ClassAd literals evaluated.
CONDOR_READER = """
import json, os, sys
import classad2, htcondor2
jobs = json.load(open(sys.argv[1]))
out = []
for job in jobs:
    os.environ["CONDOR_CONFIG"] = job["file"]
    htcondor2.reload_config()
    values = {name: htcondor2.param.get(name) for name in job["knobs"]}
    ads = {name: classad2.ExprTree(values[name]).eval() for name in job["ads"] if values[name] is not None}
    out.append({"keys": sorted(htcondor2.param.keys()), "values": values, "ads": ads})
print(json.dumps(out))
"""


def read_condor(tmp_path: Path, texts: list[str], knobs: list[str], ads: list[str]) -> list[dict[str, Any]]:
    jobs = []
    for index, text in enumerate(texts):
        path = tmp_path / f"condor-{index}.conf"
        path.write_bytes(text.encode("utf-8"))
        jobs.append({"file": str(path), "knobs": knobs, "ads": ads})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([sys.executable, "-c", CONDOR_READER, str(tmp_path / "jobs.json")], env=clean_env(HOME=str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def condor_variants(value: str) -> dict[str, condor_spec.CondorSpec]:
    return {
        "start": dataclasses.replace(BASE_CONDOR, start=value),
        "config": dataclasses.replace(BASE_CONDOR, config=(("VFARM_TEST_KNOB", value),)),
        "attribute": dataclasses.replace(BASE_CONDOR, attributes=(("VfarmTestAttr", value),)),
        "execute": dataclasses.replace(BASE_CONDOR, execute="/srv/" + value),
        "instance": BASE_CONDOR,
    }


@pytest.mark.integration
def test_condor_config_keeps_each_value_one_value(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    rendered: list[tuple[str, str, str]] = []  # (where, value, text)
    refused = 0
    for value in corpus(marker):
        for where, spec in condor_variants(value).items():
            try:
                text = condor_spec.render(spec, value if where == "instance" else "i-1")
            except UnsafeValue as err:
                assert repr(value) not in str(err)
                refused += 1
                continue
            rendered.append((where, value, text))
    assert refused and len(rendered) > 100
    baseline = read_condor(tmp_path, [condor_spec.render(BASE_CONDOR, "i-1")], [], [])[0]["keys"]
    knobs = ["START", "VFARM_TEST_KNOB", "VfarmTestAttr", "EXECUTE", "VfarmInstanceId"]
    results = read_condor(tmp_path, [text for _, _, text in rendered], knobs, ["VfarmTestAttr", "VfarmInstanceId"])
    assert not marker.exists(), "HTCondor ran a command from a rendered value"
    for (where, value, text), got in zip(rendered, results):
        assert got["keys"] == baseline, (where, value, text)
        if where == "attribute":
            assert got["ads"]["VfarmTestAttr"] == value, (where, value)
        elif where == "instance":
            assert got["ads"]["VfarmInstanceId"] == value, (where, value)
        elif where == "execute":
            assert got["values"]["EXECUTE"] == "/srv/" + value, (where, value)
        elif "$" not in value:  # START and config are HTCondor syntax: $(...) in them is a macro, by design
            if where == "start":  # in brackets, then the final check's verdict
                assert got["values"]["START"] == "(" + value.strip(" \t") + ") && " + condor_spec.VERDICT_GATE, (where, value)
            elif value.strip(" \t").lower() not in ("true", "false"):  # HTCondor prints X = TRUE as True
                assert got["values"]["VFARM_TEST_KNOB"] == value.strip(" \t"), (where, value)


@pytest.mark.integration
def test_the_condor_reader_sees_an_injected_line(tmp_path: Path) -> None:
    """Control: the same reader catches the exploit in a file written the old way (no checks)."""
    marker = tmp_path / "marker"
    hostile = f"TRUE\ninclude : /usr/bin/touch {marker} |\nVFARM_EXTRA = 1"
    text = re.sub(r"(?m)^START = .*$", lambda _: f"START = {hostile}", condor_spec.render(BASE_CONDOR, "i-1"))
    baseline = read_condor(tmp_path, [condor_spec.render(BASE_CONDOR, "i-1")], [], [])[0]["keys"]
    got = read_condor(tmp_path, [text], ["START"], [])[0]
    assert marker.exists() and "VFARM_EXTRA" in got["keys"] and got["keys"] != baseline
    with pytest.raises(UnsafeValue, match="start holds a control character"):
        condor_spec.render(dataclasses.replace(BASE_CONDOR, start=hostile), "i-1")


# The startd's view: START evaluated in its own ad, with the VfarmVerdict the config gives it.
START_READER = """
import json, os, sys
import classad2, htcondor2
out = {}
for verdict, path in json.load(open(sys.argv[1])).items():
    os.environ["CONDOR_CONFIG"] = path
    htcondor2.set_subsystem("STARTD", htcondor2.SubsystemType.Startd)
    htcondor2.reload_config()
    ad = classad2.ClassAd()
    ad["VfarmVerdict"] = classad2.ExprTree(htcondor2.param["VfarmVerdict"])
    ad["START"] = classad2.ExprTree(htcondor2.param["START"])
    ad["MaxJobRetirementTime"] = classad2.ExprTree(htcondor2.param["MAXJOBRETIREMENTTIME"])
    out[verdict] = [ad.eval("START"), ad.eval("MaxJobRetirementTime")]
print(json.dumps(out))
"""


@pytest.mark.integration
def test_the_startd_takes_jobs_only_once_the_check_found_the_worker_fit(tmp_path: Path) -> None:
    """Rendered as the handler writes it, with the file the final check writes (none before it
    ran): START is the section's own expression only for "ok" and "degraded"; not while "pending"
    (condor starts before the check) nor once "failed" (a delayed power-off leaves it in the pool).
    Neither a daemon's prefix in `config` nor brackets in `start` get past it: both are refused."""
    spec = condor_spec.parse({"central-manager": "cm.example.org", "token": "a.b.c", "start": "TARGET.RequestCpus <= 4 || TRUE"})
    configs = {}
    for verdict in ("pending", "ok", "degraded", "failed"):
        folder = tmp_path / verdict
        folder.mkdir()
        verdict_file = folder / "condor-verdict.conf"
        if verdict != "pending":
            verdict_file.write_text(f'VfarmVerdict = "{verdict}"\n')
        local = folder / "50-vfarm.conf"
        local.write_text(condor_spec.render(spec, "i-1").replace(files.CONDOR_VERDICT_FILE, str(verdict_file)))
        (folder / "condor_config").write_text(f"LOCAL_DIR = {folder}\nRELEASE_DIR = /usr\nLOCAL_CONFIG_FILE = {local}\n")
        configs[verdict] = str(folder / "condor_config")
    (tmp_path / "jobs.json").write_text(json.dumps(configs))
    done = subprocess.run([sys.executable, "-c", START_READER, str(tmp_path / "jobs.json")], env=clean_env(HOME=str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"pending": [False, 3600], "ok": [True, 3600], "degraded": [True, 3600], "failed": [False, 3600]}
    for section, refused in ((dict(config={"STARTD.START": "TRUE"}), "STARTD.START sets START for STARTD"),
                             (dict(config={"startd.MaxJobRetirementTime": 0}), "sets MAXJOBRETIREMENTTIME for startd"),
                             (dict(start="TRUE) || (TRUE"), "start's brackets and quotes must pair up")):
        with pytest.raises(ConfigError, match=re.escape(refused)):
            load_text(yaml.safe_dump({"condor": {"central-manager": "cm.example.org", "token": "a.b.c", **section}}))


@pytest.mark.parametrize("name", ["include", "IF", "else", "use", "bad name", "a\nb", "9lives", "x@=y"])
def test_condor_names_are_plain_knob_names(name: str) -> None:
    with pytest.raises(UnsafeValue):
        condor_spec.render(dataclasses.replace(BASE_CONDOR, config=((name, "1"),)), "i-1")
    with pytest.raises(UnsafeValue):
        condor_spec.render(dataclasses.replace(BASE_CONDOR, attributes=((name, "1"),)), "i-1")


def test_collector_brackets_ipv6() -> None:
    spec = condor_spec.parse({"central-manager": "[fd00::5]:9620", "token": "a.b.c"})
    assert spec.collector == "[fd00::5]:9620" and "COLLECTOR_HOST = [fd00::5]:9620\n" in condor_spec.render(spec, "i-1")


def test_the_condor_handler_fails_with_a_reason_not_the_value() -> None:
    from vfarm.cc_modules import cc_condor
    from vfarm.errors import StepError

    facts = cc_condor.Facts(config=None, token=None, installed=True, active=False, execute_exists=True, package_manager=None)
    hostile = dataclasses.replace(BASE_CONDOR, start="TRUE\ninclude : /usr/bin/id |")
    with pytest.raises(StepError, match=r"cannot write /etc/condor/config.d/50-vfarm.conf: start holds a control character \(U\+000A\)") as err:
        cc_condor.plan(hostile, facts, "i-1")
    assert "include" not in str(err.value)
    with pytest.raises(StepError, match="the pool token holds a control character"):
        cc_condor.plan(dataclasses.replace(BASE_CONDOR, token="a.b.c\nsecret"), facts, "i-1")


# --- CVMFS .local files -----------------------------------------------------------------------


def escape_shell(raw: str) -> str:
    """cvmfs 2.12 options.cc EscapeShell, transcribed: the quoting of `cvmfs2 -o parse`, which
    cvmfs_config evals."""
    if re.fullmatch(r"[0-9A-Za-z/:._,-]*", raw):
        return raw
    return "'" + raw.replace("'", "\\'") + "'"


def parameter_of(line: str) -> str:
    """options.cc SanitizeParameterAssignment + TrimParameter, transcribed: the name a line sets."""
    line = line.split("#", 1)[0].strip()
    tokens = line.split("=")
    if not line or len(tokens) < 2:
        return ""
    name = tokens[0].strip()
    for prefix in ("readonly ", "export ", "eval "):
        if name.startswith(prefix):
            name = name[len(prefix):].strip()
            break
    return "" if " " in name else name


def simple_parse(text: str) -> dict[str, str]:
    """options.cc SimpleOptionsParser::TryParsePath, transcribed (no shell)."""
    out = {}
    for line in text.split("\n"):
        name = parameter_of(line)
        if not name:
            continue
        value = "=".join(line.split("#", 1)[0].strip().split("=")[1:]).strip()
        if len(value) > 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[name] = value
    return out


def bash_values(path: Path, names: list[str]) -> list[str]:
    script = 'set -a; . "$1"; shift; for n; do printf "%s\\0" "${!n}"; done'
    done = subprocess.run(["bash", "-c", script, "_", str(path), *names], env=clean_env(), capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode("utf-8").split("\0")[:-1]


def options_manager_values(path: Path) -> dict[str, str]:
    """BashOptionsManager::ParsePath's protocol with the real /bin/sh: `cd` to the file's folder,
    every line of the file, then `echo $NAME` per assignment line, one line of output each."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    names = [parameter_of(line) for line in lines if parameter_of(line)]
    script = f'cd "{path.parent}"\n' + "".join(line + "\n" for line in lines) + "".join(f"echo ${name}\n" for name in names)
    done = subprocess.run(["/bin/sh"], input=script.encode("utf-8"), env=clean_env(), capture_output=True, timeout=30, cwd=path.parent)
    out = done.stdout.decode("utf-8").split("\n")
    return {name: out[index] if index < len(out) else "" for index, name in enumerate(names)}


def config_eval_value(name: str, value: str, source: Path) -> str:
    """What cvmfs_config gets: /bin/sh evals `NAME=ESCAPED    # from SOURCE`."""
    dump = f"{name}={escape_shell(value)}    # from {source}\n"
    done = subprocess.run(["/bin/sh", "-c", 'eval "$1"; printf %s "$' + name + '"', "_", dump], env=clean_env(), capture_output=True, timeout=30)
    return done.stdout.decode("utf-8")


def cvmfs_variants(value: str) -> dict[str, dict[str, Any]]:
    return {
        "scalar": {"server-url": value},
        "list": {"repositories": ["alice.cern.ch", value]},
        "group": {"http-proxy": [[value, "DIRECT"], "DIRECT"]},
        "key": {value: "x"},
    }


@pytest.mark.integration
def test_cvmfs_files_keep_each_value_one_value(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "etc-cvmfs"
    folder.mkdir()
    for name in ("a", "ab", "b", "x"):  # file names a glob in a value would expand to
        (folder / name).write_text("")
    path = folder / "default.local"
    checked = refused = 0
    for value in corpus(marker):
        for where, settings in cvmfs_variants(value).items():
            try:
                text = cvmfs_spec.render(settings, header=cc_cvmfs.HEADER)
            except UnsafeValue as err:
                assert repr(value) not in str(err)
                refused += 1
                continue
            path.write_text(text, encoding="utf-8")
            expected = {cvmfs_spec.variable(k): cvmfs_spec.join(cvmfs_spec.variable(k), v) for k, v in settings.items()}
            assert len(text.split("\n")) == len(settings) + 2, (where, value)  # header, lines, final newline
            assert bash_values(path, list(expected)) == list(expected.values()), (where, value)
            assert options_manager_values(path) == expected, (where, value)
            assert simple_parse(text) == expected, (where, value)
            for name, want in expected.items():
                assert config_eval_value(name, want, path) == want, (where, value)
            checked += 1
    assert checked > 20 and refused > 100
    assert not marker.exists(), "a shell ran a command from a rendered value"


@pytest.mark.integration
@pytest.mark.parametrize("value", ["a  b", "*", "-n", "sq'uote", "back\\slash", "a#b"])
def test_the_cvmfs_readers_would_change_what_render_refuses(tmp_path: Path, value: str) -> None:
    """Control: written with the old quoting (escapes in double quotes), these values come back
    changed from one of the readers above, which is why render refuses them."""
    for name in ("a", "ab", "b", "x"):
        (tmp_path / name).write_text("")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    path = tmp_path / "default.local"
    path.write_text(f'CVMFS_X="{escaped}"\n')
    readings = [options_manager_values(path)["CVMFS_X"], simple_parse(path.read_text())["CVMFS_X"], config_eval_value("CVMFS_X", value, path)]
    assert any(reading != value for reading in readings), readings
    with pytest.raises(UnsafeValue):
        cvmfs_spec.render({"CVMFS_X": value})


# --- fstab ------------------------------------------------------------------------------------

IMAGE_FSTAB = "LABEL=root / ext4 defaults 0 1\ntmpfs /tmp tmpfs defaults 0 0\n"


def findmnt(path: Path) -> list[dict[str, str]]:
    done = subprocess.run(["findmnt", "--fstab", "--tab-file", str(path), "-J", "-o", "SOURCE,TARGET,FSTYPE,OPTIONS"],
                          env=clean_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, str]] = json.loads(done.stdout)["filesystems"]
    return rows


@pytest.mark.integration
def test_fstab_keeps_each_field_one_field(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    entries: list[tuple[str, str, str, str, int, int]] = []
    refused = 0
    for index, value in enumerate(corpus(marker)):
        for entry in ((f"/dev/vg/{index}", "/srv/" + value, "ext4", "defaults", 0, 2), (f"/dev/vg/o{index}", f"/o/{index}", "ext4", value, 0, 2),
                      (f"/dev/{value}/lv", f"/d/{index}", "xfs", "defaults", 0, 2), (f"/dev/vg/s{index}", "none", "swap", value, 0, 0)):
            try:
                cc_localfs.fstab_line(entry)
            except UnsafeValue:
                refused += 1
                continue
            entries.append(entry)
    assert refused and len(entries) > 200
    text = cc_localfs.fstab_text(IMAGE_FSTAB, entries, {})
    assert cc_localfs.fstab_text(text, entries, {}) == text  # a second run reads its own lines back
    path = tmp_path / "fstab"
    path.write_text(text, encoding="utf-8")
    rows = findmnt(path)
    assert [(r["source"], r["target"], r["fstype"], r["options"]) for r in rows[2:]] == [(e[0], e[1], e[2], e[3]) for e in entries]
    assert len(rows) == len(entries) + 2


@pytest.mark.integration
def test_findmnt_sees_a_raw_blank_as_two_fields(tmp_path: Path) -> None:
    """Control: unescaped, a blank in a mount point moves every later field."""
    path = tmp_path / "fstab"
    path.write_text("/dev/vg/x /srv/a b ext4\n")
    assert [(r["target"], r["fstype"], r["options"]) for r in findmnt(path)] == [("/srv/a", "b", "ext4")]


# --- apt and yum sources ----------------------------------------------------------------------


def repository_files(custom: dict[str, Any], manager: str) -> Optional[dict[str, str]]:
    facts = cc_cvmfs.Facts(manager=manager, codename="bookworm")
    try:
        steps = cc_cvmfs._repository_steps({"package-repository": custom}, facts)
    except UnsafeValue:
        return None
    return {s.path: s.content for s in steps if isinstance(s, WriteFile) and s.action == "write-file"}


def test_apt_and_yum_sources_stay_one_entry(tmp_path: Path) -> None:
    written = refused = 0
    for value in corpus(tmp_path / "marker"):
        for key in ("apt", "suite", "components", "gpg-key"):
            custom = {"apt": "https://repo.example.org/cvmfs", "gpg-key": "https://repo.example.org/key.asc", key: value}
            files = repository_files(custom, "apt-get")
            if files is None:
                refused += 1
                continue
            line = files[cc_cvmfs.APT_LIST]
            assert line.count("\n") == 1 and line.endswith("\n") and "#" not in line, (key, value)
            words = line.split()
            assert words[:2] == ["deb", f"[signed-by={cc_cvmfs.APT_KEY}]"] and words[2] == custom["apt"], (key, value)
            assert words[3] == custom.get("suite", "bookworm-prod") and " ".join(words[4:]) == custom.get("components", "main"), (key, value)
            written += 1
        for key in ("yum", "gpg-key"):
            custom = {"yum": "https://repo.example.org/el9", "gpg-key": "https://repo.example.org/key.asc", key: value}
            files = repository_files(custom, "dnf")
            if files is None:
                refused += 1
                continue
            parser = configparser.ConfigParser(interpolation=None)
            parser.read_string(files[cc_cvmfs.YUM_REPO])
            assert parser.sections() == ["vfarm-cvmfs"], (key, value)
            repo = dict(parser["vfarm-cvmfs"])
            assert repo == {"name": "CernVM-FS (vfarm)", "baseurl": custom["yum"], "enabled": "1", "gpgcheck": "1", "gpgkey": custom["gpg-key"]}, (key, value)
            written += 1
    assert written > 10 and refused > 100


def test_the_cvmfs_and_localfs_handlers_fail_with_a_plan_error() -> None:
    facts = cc_cvmfs.Facts(manager="apt-get", installed="2.11.5", codename="bookworm")
    with pytest.raises(PlanError, match="cannot write /etc/cvmfs/default.local: CVMFS_SERVER_URL holds a control character"):
        cc_cvmfs.plan({"local": {"server-url": "http://s/cvmfs\nCVMFS_HTTP_PROXY=DIRECT"}}, facts)
    with pytest.raises(PlanError, match="package-repository apt cannot be written on one apt or yum source line"):
        cc_cvmfs.plan({"install": True, "version": "2.12.0", "package-repository": {"apt": "https://r/ [trusted=yes]"}}, facts)
    lvm = cc_localfs.Facts(vgs={"vg0": {"extent_size": 4 << 20, "extents": 1000, "free": 1000}})
    spec = localfs_spec.parse({"parts": {"data": {"size": 10, "mount": "/srv/data", "options": "defaults\0x"}}})
    with pytest.raises(PlanError, match="cannot write /etc/fstab: an fstab field cannot hold a NUL"):
        cc_localfs.plan(spec, lvm)


def test_cvmfs_file_names_stay_in_their_folder() -> None:
    for name in ("../../etc/cron.d/x", "a/b.cern.ch", "cern.ch\n"):
        with pytest.raises(PlanError):
            cc_cvmfs.config_files({"repository": {name: {"server-url": "http://s/cvmfs/@fqrn@"}}})


# --- hypothesis: validate, then render, never adds a line -------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
# Arbitrary text, or a valid start with arbitrary text (or a known breaker) after it: schema
# patterns that search (`$` before a final newline) let the second kind through.
BREAKERS = st.sampled_from(["\n", "\r\n", "\0", "\\", "\\ ", " #x", "\u2028", "\n include : x |"])
SUFFIX = st.one_of(TEXT, BREAKERS, st.tuples(TEXT, BREAKERS).map("".join))


def near(prefix: str, suffix: str) -> list[str]:
    """The values a field is tried with: the suffix alone and after a valid start."""
    return [suffix, prefix + suffix]
HYPOTHESIS = hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def validated(section: str, data: dict[str, Any]) -> Optional[dict[str, Any]]:
    try:
        loaded = load_text(yaml.safe_dump({section: data}, sort_keys=False), source="hypothesis", sections={section})
    except ConfigError:
        return None
    result: dict[str, Any] = loaded.sections[section]
    return result


def condor_lines(section: dict[str, Any], instance_id: str = "i-1") -> Optional[list[str]]:
    try:
        return condor_spec.render(condor_spec.parse(section), instance_id).split("\n")
    except UnsafeValue:
        return None


# The lines render() writes: a comment, the role, `NAME = VALUE`, and its one fixed include (the verdict).
CONDOR_LINE = re.compile(r"#.*|use ROLE: Execute|[A-Za-z_][A-Za-z0-9_.]* = .*|" + re.escape(f"include ifexist : {files.CONDOR_VERDICT_FILE}") + "|")


def condor_fields(text: str) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"central-manager": "cm.example.org", "token": "a.b.c"}
    fields: list[dict[str, Any]] = []
    for value in near("TRUE", text):
        fields += [{**base, "start": value}, {**base, "config": {"VFARM_K": value}}, {**base, "attributes": {"VfarmA": value}}]
    fields += [{**base, "execute": value} for value in near("/srv/x", text)]
    fields += [{**base, "central-manager": value} for value in near("cm.example.org", text)]
    fields += [{**base, "config": {value: "1"}} for value in near("VFARM_K", text)]
    fields += [{**base, "attributes": {value: "x"}} for value in near("VfarmA", text)]
    return fields


@HYPOTHESIS
@given(SUFFIX, st.data())
def test_condor_validate_then_render_never_adds_a_line(text: str, draw: st.DataObject) -> None:
    expected = len(condor_lines({"central-manager": "cm.example.org", "token": "a.b.c", "config": {"K": "1"}}) or [])
    data = draw.draw(st.sampled_from(condor_fields(text)))
    section = validated("condor", data)
    lines = condor_lines(section) if section is not None else None
    if lines is not None:
        want = expected - (0 if "config" in data else 1) + (1 if "attributes" in data else 0)
        assert len(lines) == want, (data, lines)
        assert all(CONDOR_LINE.fullmatch(line) and not line.rstrip().endswith("\\") for line in lines), (data, lines)
    lines = condor_lines({"central-manager": "cm.example.org", "token": "a.b.c"}, text)  # the instance id, from cloud-init
    assert lines is None or len(lines) == expected - 1


@HYPOTHESIS
@given(SUFFIX, st.data())
def test_cvmfs_validate_then_render_never_adds_a_line(text: str, draw: st.DataObject) -> None:
    shapes: list[dict[str, Any]] = []
    for value in near("http://s.example.org/cvmfs/@fqrn@", text):
        shapes += [{"local": {"server-url": value}}, {"local": {"repositories": ["a.cern.ch", value]}}]
    shapes += [{"local": {key: "x"}} for key in near("server-url", text) + near("CVMFS_X", text)]
    shapes += [{"repository": {name: {"server-url": "http://s/cvmfs/@fqrn@"}}} for name in near("a.cern.ch", text)]
    shapes += [{"domain": {"cern.ch": {"http-proxy": [[proxy]]}}} for proxy in near("http://squid.example.org:3128", text)]
    starts = {"apt": "https://r.example.org/a", "suite": "bookworm", "components": "main", "gpg-key": "https://r.example.org/k", "yum": "https://r.example.org/y"}
    # With its key, as validate asks of a custom repository (unless trusted): the shapes then reach the rendering.
    shapes += [{"install": True, "package-repository": {"apt": starts["apt"], "yum": starts["yum"], "gpg-key": starts["gpg-key"], key: value}}
               for key, start in starts.items() for value in near(start, text)]
    data = draw.draw(st.sampled_from(shapes))
    section = validated("cvmfs", data)
    if section is None:
        return
    if "package-repository" in data:
        extra = 1 if "gpg-key" in data["package-repository"] else 0
        for manager, lines in (("apt-get", 1), ("dnf", 5 + extra)):
            files = repository_files(section["package-repository"], manager)
            if files is not None:
                assert all(content.count("\n") == lines for content in files.values()), (data, files)
        return
    try:
        files = {path: cvmfs_spec.render(settings, header=cc_cvmfs.HEADER) for path, settings in cc_cvmfs.config_files(section).items()}
    except (UnsafeValue, PlanError):
        return
    for path, content in files.items():
        settings = cc_cvmfs.config_files(section)[path]
        assert content.count("\n") == len(settings) + 1, (data, content)
        assert all(parameter_of(line) for line in content.split("\n")[1:-1]), (data, content)


LOCALFS_STARTS = {"mount": "/srv/data", "options": "defaults", "vg": "vg0"}


@HYPOTHESIS
@given(SUFFIX, st.sampled_from(sorted(LOCALFS_STARTS)), st.booleans())
def test_localfs_validate_then_render_never_adds_a_line(text: str, field: str, after_valid_start: bool) -> None:
    value = near(LOCALFS_STARTS[field], text)[after_valid_start]
    part: dict[str, Any] = {"size": 10, "mount": "/srv/data"}
    data: dict[str, Any] = {"parts": {"data": part}}
    if field == "vg":
        data["vg"] = value
    else:
        part[field] = value
    section = validated("localfs", data)
    if section is None:
        return
    spec = localfs_spec.parse(section)
    vg = spec.vg or "vg_local"
    facts = cc_localfs.Facts(vgs={vg: {"extent_size": 4 << 20, "extents": 1000, "free": 1000}}, fstab=IMAGE_FSTAB)
    try:
        steps = cc_localfs.plan(spec, facts).steps
    except PlanError:
        return
    fstab = next(s.content for s in steps if isinstance(s, WriteFile) and s.action == "write-fstab")
    assert fstab.count("\n") == IMAGE_FSTAB.count("\n") + 2, (data, fstab)  # the mark and one entry
    assert len(fstab.split("\n")[-2].split("\t")) == 6, (data, fstab)
