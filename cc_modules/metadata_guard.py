"""The metadata guard: only root may reach the cloud's metadata service (169.254.169.254).

On EC2 and OpenStack every process on an instance can read the user-data from the metadata
service, and a worker's user-data carries the pool's IDTOKEN: any job could take it and advertise
machines of its own to the pool. So before condor starts (and so before any job), cc_condor puts
a packet filter rule in place that rejects connections to the metadata address from every user
but root (cloud-init, which reads it, runs as root; so do vfarm's handlers).

The rule is vfarm's own and can be shown:
- nftables (preferred, where `nft` exists): a table of its own, `inet vfarm_metadata_guard`,
  loaded from /etc/vfarm/metadata-guard.nft (`nft list table inet vfarm_metadata_guard`);
- iptables otherwise: OUTPUT rules with the comment `vfarm-metadata-guard` (`iptables -S OUTPUT`,
  `ip6tables -S OUTPUT`).
Both cover the IPv6 addresses too: EC2's fd00:ec2::254 and OpenStack's fe80::a9fe:a9fe.
A boot-time unit, vfarm-metadata-guard.service, puts the same rules back after every reboot (the
handler runs once per instance, the kernel forgets the rules); condor.service requires it
(`RequiredBy=`), so condor does not start at a boot whose guard failed.
Pure: texts and argv lists only; cc_condor discovers, plans and runs them.
"""

from __future__ import annotations

from typing import Callable, Optional

ADDRESS = "169.254.169.254"
# EC2's IMDS on IPv6 (Nitro), and OpenStack's metadata service on IPv6 (link-local, Nova's docs).
ADDRESSES_V6 = ("fd00:ec2::254", "fe80::a9fe:a9fe")
TABLE = "vfarm_metadata_guard"
RULES_FILE = "/etc/vfarm/metadata-guard.nft"
UNIT = "vfarm-metadata-guard.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
COMMENT = "vfarm-metadata-guard"
BACKENDS = ("nft", "iptables")
# Where the tools live on Debian and EL alike (systemd wants absolute paths in ExecStart).
TOOL_PATHS = {"nft": "/usr/sbin/nft", "iptables": "/usr/sbin/iptables", "ip6tables": "/usr/sbin/ip6tables"}
# The distribution package that brings nft, for `install: true` on an image with neither tool.
PACKAGE = "nftables"


def backend(which: Callable[[str], Optional[str]]) -> Optional[str]:
    """The packet filter this image has: nft, else iptables, else None."""
    return next((tool for tool in BACKENDS if which(tool)), None)


def nft_rules() -> str:
    """The nftables file: creates the table if missing, deletes it, defines it anew, all in one
    transaction (`nft -f`), so loading it twice leaves exactly one copy of the rules."""
    return "\n".join([
        "# Written by vfarm (cc_condor): the metadata service answers root only; it serves the",
        "# user-data, and the pool's token in it. Show it: nft list table inet " + TABLE,
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "\tchain output {",
        "\t\ttype filter hook output priority filter; policy accept;",
        f"\t\tip daddr {ADDRESS} meta skuid != 0 counter reject",
        f"\t\tip6 daddr {{ {', '.join(ADDRESSES_V6)} }} meta skuid != 0 counter reject",
        "\t}",
        "}",
    ]) + "\n"


def iptables_rule(address: str = ADDRESS) -> list[str]:
    """The OUTPUT rule's match and target for ADDRESS (after -I/-D/-C OUTPUT)."""
    mask = "128" if ":" in address else "32"
    return ["-d", f"{address}/{mask}", "-m", "owner", "!", "--uid-owner", "0", "-m", "comment", "--comment", COMMENT, "-j", "REJECT"]


def _iptables_rules() -> list[tuple[str, list[str]]]:
    """(tool, rule) for each address: iptables for IPv4, ip6tables for IPv6."""
    return [("iptables", iptables_rule(ADDRESS)), *(("ip6tables", iptables_rule(a)) for a in ADDRESSES_V6)]


def apply_argvs(tool: str) -> list[tuple[list[str], bool]]:
    """(argv, must succeed) to put the rules in place now; idempotent."""
    if tool == "nft":
        return [(["nft", "-f", RULES_FILE], True)]
    # Delete a copy left by an earlier run (none: an error, ignored), then insert it first in OUTPUT.
    argvs: list[tuple[list[str], bool]] = []
    for program, rule in _iptables_rules():
        argvs += [([program, "-w", "-D", "OUTPUT", *rule], False), ([program, "-w", "-I", "OUTPUT", "1", *rule], True)]
    return argvs


def active_argvs(tool: str) -> list[list[str]]:
    """Each exits 0 when its rule is in place."""
    if tool == "nft":
        return [["nft", "list", "table", "inet", TABLE]]
    return [[program, "-w", "-C", "OUTPUT", *rule] for program, rule in _iptables_rules()]


def show_command(tool: str) -> str:
    """How an admin sees the rules."""
    return f"nft list table inet {TABLE}" if tool == "nft" else "iptables -S OUTPUT; ip6tables -S OUTPUT"


def unit_text(tool: str) -> str:
    """The boot-time unit that puts the rules back before condor starts; condor requires it."""
    # A leading '-' lets that command fail (deleting a rule that is not there); no word needs quotes.
    starts = [f"ExecStart={'' if must else '-'}{TOOL_PATHS[argv[0]]} {' '.join(argv[1:])}" for argv, must in apply_argvs(tool)]
    return "\n".join([
        "# Written by vfarm (cc_condor): the metadata service answers root only, from boot on.",
        "[Unit]",
        "Description=vfarm: the cloud metadata service for root only",
        "Before=condor.service",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        *starts,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "RequiredBy=condor.service",
    ]) + "\n"

