"""The metadata guard: only root reaches 169.254.169.254 once cc_condor has run.

Its plan (pure, from facts), and its rules applied by the REAL nft and iptables inside a private
network namespace (`unshare --net`, as root): a metadata server on 169.254.169.254:80 (and EC2's
fd00:ec2::254) answers root and refuses uid 65534 (a job's slot user stands for it), other
addresses stay open, loading twice leaves one copy, and the boot-time unit's commands put the
rule back after the kernel forgot it (a reboot). Nothing touches the host's own network."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cloudinit import Release
from vfarm.cc_modules import cc_condor, metadata_guard
from vfarm.cc_modules.steps import Custom, Plan, Run, WriteFile
from vfarm.config import condor as condor_spec
from vfarm.errors import StepError

SECTION: dict[str, Any] = {"central-manager": "cm.example.org", "token": "aaa.bbb.ccc"}
SPEC = condor_spec.parse(SECTION)
GUARD_ACTIONS = ["guard-folders", "write-guard-rules", "write-guard-unit", "enable-guard", "protect-metadata"]


def facts(**changes: Any) -> cc_condor.Facts:
    base: dict[str, Any] = dict(config=None, token=None, installed=True, active=False, execute_exists=True, package_manager="apt-get",
                                firewall="nft")
    base.update(changes)
    return cc_condor.Facts(**base)


def actions(plan: Plan) -> list[str]:
    return plan.actions()


def step(plan: Plan, action: str) -> Any:
    return next(s for s in plan.steps if s.action == action)


# --- the plan ---------------------------------------------------------------------------------------


def test_on_by_default_and_in_place_before_condor_starts() -> None:
    assert SPEC.protect_metadata is True
    plan = cc_condor.plan(SPEC, facts(), "i-1")
    # The guard before the token and the pool's config: a guard that fails leaves nothing to join with.
    assert actions(plan) == [*GUARD_ACTIONS, "write-token", "write-config", "check-config", "start", "wait-join"]
    rules = step(plan, "write-guard-rules")
    assert isinstance(rules, WriteFile) and rules.content == metadata_guard.nft_rules() and rules.path == "/etc/vfarm/metadata-guard.nft"
    assert step(plan, "guard-folders").details == {"paths": ["/etc/systemd/system", "/etc/vfarm"]}
    enable = step(plan, "enable-guard")
    assert isinstance(enable, Run) and enable.argv == ["systemctl", "enable", "vfarm-metadata-guard.service"]
    protect = step(plan, "protect-metadata")
    assert isinstance(protect, Custom) and protect.details["argvs"] == [["nft", "-f", "/etc/vfarm/metadata-guard.nft"]]
    assert protect.details["show"] == "nft list table inet vfarm_metadata_guard"


def test_a_second_run_leaves_the_guard_alone_but_puts_a_missing_rule_back() -> None:
    done = dict(config=condor_spec.render(SPEC, "i-1"), token="aaa.bbb.ccc\n", active=True, guard_rules=metadata_guard.nft_rules(),
                guard_unit=metadata_guard.unit_text("nft"), guard_enabled=True)
    assert actions(cc_condor.plan(SPEC, facts(**done, guard_active=True), "i-1")) == ["wait-join"]
    assert actions(cc_condor.plan(SPEC, facts(**done, guard_active=False), "i-1")) == ["protect-metadata", "wait-join"]
    # A first run that wrote the unit and failed before enabling it: the second enables it.
    unenabled = {**done, "guard_enabled": False}
    assert actions(cc_condor.plan(SPEC, facts(**unenabled, guard_active=True), "i-1")) == ["guard-folders", "enable-guard", "protect-metadata",
                                                                                             "wait-join"]
    # A token file with the right words but readable by others (baked into an image, say) is written anew, 0600.
    loose = cc_condor.plan(SPEC, facts(**done, guard_active=True, token_private=False), "i-1")
    assert actions(loose)[0] == "write-token" and step(loose, "write-token").mode == 0o600


def test_iptables_when_the_image_has_no_nft() -> None:
    plan = cc_condor.plan(SPEC, facts(firewall="iptables"), "i-1")
    assert "write-guard-rules" not in actions(plan)
    argvs = metadata_guard.apply_argvs("iptables")
    assert step(plan, "protect-metadata").details["argvs"] == [argv for argv, _ in argvs]
    (delete, may_fail), (insert, must) = argvs[:2]
    assert delete[:4] == ["iptables", "-w", "-D", "OUTPUT"] and not may_fail and insert[:5] == ["iptables", "-w", "-I", "OUTPUT", "1"] and must
    # IPv6 through ip6tables: one rule per address (EC2's and OpenStack's), each deleted then inserted.
    assert [argv[0] for argv, _ in argvs[2:]] == ["ip6tables"] * 4 and [argv[argv.index("-d") + 1] for argv, _ in argvs[2:]] == [
        "fd00:ec2::254/128", "fd00:ec2::254/128", "fe80::a9fe:a9fe/128", "fe80::a9fe:a9fe/128"]
    unit = step(plan, "write-guard-unit").content
    assert "ExecStart=-/usr/sbin/iptables -w -D OUTPUT" in unit and "ExecStart=/usr/sbin/iptables -w -I OUTPUT 1" in unit
    assert "ExecStart=/usr/sbin/ip6tables -w -I OUTPUT 1 -d fe80::a9fe:a9fe/128" in unit


def test_no_packet_filter_fails_unless_it_may_install_one() -> None:
    with pytest.raises(StepError, match="neither nft nor iptables.*protect-metadata: false"):
        cc_condor.plan(SPEC, facts(firewall=None), "i-1")
    spec = condor_spec.parse({**SECTION, "install": True})
    plan = cc_condor.plan(spec, facts(firewall=None), "i-1")
    assert step(plan, "install-guard").argv == ["apt-get", "install", "-y", "--no-install-recommends", "nftables"]
    # No debconf prompt may hold the boot: apt runs non-interactive, for condor itself too.
    assert step(plan, "install-guard").env == {"DEBIAN_FRONTEND": "noninteractive"}
    assert step(cc_condor.plan(spec, facts(installed=False), "i-1"), "install").env == {"DEBIAN_FRONTEND": "noninteractive"}
    assert actions(plan).index("install-guard") < actions(plan).index("protect-metadata") < actions(plan).index("start")
    off = condor_spec.parse({**SECTION, "protect-metadata": False})
    assert not set(GUARD_ACTIONS) & set(actions(cc_condor.plan(off, facts(firewall=None), "i-1")))


def test_the_unit_runs_before_condor_at_every_boot() -> None:
    for tool in metadata_guard.BACKENDS:
        unit = metadata_guard.unit_text(tool)
        assert "Before=condor.service" in unit and "WantedBy=multi-user.target" in unit and "Type=oneshot" in unit
        assert "RequiredBy=condor.service" in unit  # a boot whose guard failed does not start condor
        starts = [line.split("=", 1)[1].lstrip("-") for line in unit.splitlines() if line.startswith("ExecStart=")]
        assert starts and all(s.startswith("/usr/sbin/") for s in starts)  # absolute, as systemd wants
        assert [shlex.split(s)[1:] for s in starts] == [argv[1:] for argv, _ in metadata_guard.apply_argvs(tool)]


def test_the_section_key_is_validated() -> None:
    from vfarm.config.loader import ConfigError, load_text

    load_text("#multiple-config\ncondor:\n  central-manager: cm\n  token: a.b.c\n  protect-metadata: false\n", "farm.yaml")
    with pytest.raises(ConfigError, match=r"farm.yaml:5:\d+: .*protect-metadata"):
        load_text("#multiple-config\ncondor:\n  central-manager: cm\n  token: a.b.c\n  protect-metadata: maybe\n", "farm.yaml")


# --- the real packet filters, in a network namespace of their own ------------------------------------

NAMESPACE_SCRIPT = r"""
import http.server, json, shlex, socket, subprocess, sys, threading
job = json.loads(sys.argv[1])

def sh(argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)

sh(["ip", "link", "set", "lo", "up"])
sh(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"])
sh(["ip", "-6", "addr", "add", "fd00:ec2::254/128", "dev", "lo", "nodad"])
sh(["ip", "-6", "addr", "add", "fe80::a9fe:a9fe/64", "dev", "lo", "nodad"])  # OpenStack's, link-local

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"user-data with the pool token"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        pass

class Server6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

servers = [http.server.ThreadingHTTPServer(("169.254.169.254", 80), Handler), Server6(("fd00:ec2::254", 80), Handler),
           Server6(("fe80::a9fe:a9fe", 80, 0, socket.if_nametoindex("lo")), Handler), http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Handler)]
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()

FETCH = ("import sys, urllib.request\ntry:\n    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
         "except Exception as err:\n    print('refused:', err)")
URLS = {"v4": "http://169.254.169.254/latest/user-data", "v6": "http://[fd00:ec2::254]/latest/user-data",
        "openstack-v6": "http://[fe80::a9fe:a9fe%25lo]/openstack/latest/user_data", "other": "http://127.0.0.1:8080/"}

def fetch(as_root):
    prefix = [] if as_root else ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return {name: sh(prefix + ["/usr/bin/python3", "-c", FETCH, url]).stdout.strip() for name, url in URLS.items()}

def run_all(argvs):
    for argv, must in argvs:
        sh(argv, check=must)

out = {"before": fetch(False)}
run_all(job["apply"])
run_all(job["apply"])  # twice: still one copy
out["root"], out["user"] = fetch(True), fetch(False)
out["shown"] = "".join(sh(argv).stdout for argv in job["show"])
for argv in job["forget"]:  # what a reboot does to the kernel's rules
    sh(argv)
out["forgotten"] = fetch(False)
for line in job["unit_starts"]:  # the boot-time unit's commands, as systemd runs them
    must = not line.startswith("-")
    sh(shlex.split(line.lstrip("-")), check=must)
out["after_unit"] = fetch(False)
print(json.dumps(out))
"""


def in_namespace(tool: str, tmp_path: Path) -> dict[str, Any]:
    rules = tmp_path / "metadata-guard.nft"
    rules.write_text(metadata_guard.nft_rules())

    def here(argv: list[str]) -> list[str]:
        return [str(rules) if a == metadata_guard.RULES_FILE else a for a in argv]

    unit = metadata_guard.unit_text(tool).replace(metadata_guard.RULES_FILE, str(rules))
    job = {
        "apply": [(here(argv), must) for argv, must in metadata_guard.apply_argvs(tool)],
        "show": [shlex.split(command) for command in metadata_guard.show_command(tool).split("; ")],
        "forget": [["nft", "flush", "ruleset"]] if tool == "nft" else [["iptables", "-w", "-F", "OUTPUT"], ["ip6tables", "-w", "-F", "OUTPUT"]],
        "unit_starts": [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")],
    }
    done = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", NAMESPACE_SCRIPT, json.dumps(job)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


SECRET = "user-data with the pool token"


@pytest.mark.integration
@pytest.mark.parametrize("tool", metadata_guard.BACKENDS)
def test_only_root_reaches_the_metadata_service(tool: str, tmp_path: Path) -> None:
    if not shutil.which(tool):
        pytest.fail(f"{tool} is missing: tools/run installs nftables and iptables")
    got = in_namespace(tool, tmp_path)
    everyone = {"v4": SECRET, "v6": SECRET, "openstack-v6": SECRET, "other": SECRET}
    assert got["before"] == everyone  # open to everyone before the guard
    assert got["root"] == everyone
    refused = {name: reply.startswith("refused:") for name, reply in got["user"].items()}
    assert refused == {"v4": True, "v6": True, "openstack-v6": True, "other": False}, got["user"]
    if tool == "nft":
        assert got["shown"].count("meta skuid != 0") == 2  # loaded twice, one copy (v4 + the v6 set)
    else:
        assert got["shown"].count(metadata_guard.COMMENT) == 3  # applied twice, one copy each (v4, EC2's v6, OpenStack's v6)
    assert got["forgotten"]["v4"] == SECRET and got["forgotten"]["openstack-v6"] == SECRET  # the kernel forgot them...
    after = {name: reply.startswith("refused:") for name, reply in got["after_unit"].items()}
    assert after == {"v4": True, "v6": True, "openstack-v6": True, "other": False}  # ...the unit puts them back


# --- cloud-init's own copies of the user-data ------------------------------------------------------


def test_cloud_inits_copies_of_the_user_data_are_root_only(cloudinit_release: Release, tmp_path: Path) -> None:
    """Debian's REAL cloud-init 22.4 and 25.1 walk a user-data with the condor part (7-bit, so the
    token is literal in every copy): every file under its cloud and run folders that holds the
    token is readable by root alone (user-data.txt and .i 0600, obj.pkl 0400); instance-data.json,
    readable by all, holds none of it."""
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    import yaml

    from tests.cc_modules.test_condor_cloudinit import CONDOR, HANDLER_SHIM, TOKEN, boot

    message = MIMEMultipart()
    for subtype, name, text in (("part-handler", "condor_handler.py", HANDLER_SHIM), ("condor-config", "condor.yaml", yaml.safe_dump({"condor": CONDOR}))):
        part = MIMEText(text, subtype, "us-ascii")
        part.add_header("Content-Disposition", "attachment", filename=name)
        message.attach(part)
    out, _log, _commands = boot(cloudinit_release, tmp_path, message.as_string(), {}, preinstalled=False)
    assert out["after_parts"]["condor.status.json"]["status"] == "ok"
    holding: dict[str, int] = {}
    for base in ("cloud", "run"):
        for path in (tmp_path / base).rglob("*"):
            if path.is_file() and not path.is_symlink() and TOKEN.encode() in path.read_bytes():
                holding[str(path.relative_to(tmp_path / base)).replace("instances/iid-datasource-none/", "instance/")] = path.stat().st_mode & 0o777
    assert {"instance/user-data.txt", "instance/user-data.txt.i", "instance/obj.pkl"} <= set(holding), holding
    assert {name: mode for name, mode in holding.items() if mode & 0o077} == {}, holding
    assert (tmp_path / "run/instance-data.json").stat().st_mode & 0o004  # readable by all: and so without the token
