"""`vfarm launch openstack`, and `vfarm instances` / `vfarm terminate` with `--cloud openstack`:
the life cycle of vfarm's workers through OpenStack's own API.

Every failure is one line on stderr and exit 1 (see openstack.OpenStackError); nothing prints a
password or an application credential's secret.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional

from ..cc_modules import table
from ..clouds import openstack
from ..display import shown_message
from ..mime_builder.limits import OPENSTACK_B64_LIMIT, OPENSTACK_LIMIT
from ..redaction import redact_strings
from .cloud import launch_targets, print_instances, read_verdicts
from .common import (
    COUNT,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    add_command,
    add_userdata_options,
    build_userdata,
    fail,
    output_without_dry_run,
    print_dry_run,
    wait_reporter,
    write_dry_run,
)


def _cloud(args: argparse.Namespace) -> openstack.OpenStackCloud:
    return openstack.OpenStackCloud(args.os_cloud, region=args.os_region)


def _print(servers: list[dict[str, Any]], as_json: bool, verdicts: Optional[dict[str, str]] = None) -> None:
    print_instances(servers, as_json, verdicts, openstack.SUMMARY_HEADERS, openstack.summary_row)


def cmd_launch_openstack(args: argparse.Namespace) -> int:
    misused = output_without_dry_run(args, "launch openstack")
    if misused is not None:
        return misused
    try:
        properties = openstack.parse_properties(args.property)
        openstack.server_metadata(properties, args.client_token or "dry-run")
        if args.max_size > OPENSTACK_LIMIT:
            # Nova's limit is fixed: more would only be refused by Nova, after the build
            raise openstack.OpenStackError(f"--max-size {args.max_size} is over what Nova takes: {OPENSTACK_LIMIT} bytes "
                                           f"({OPENSTACK_B64_LIMIT} characters of base64)")
    except openstack.OpenStackError as err:
        return fail(str(err))
    built = build_userdata(args, "launch")
    if built is None:
        return EXIT_PROBLEM
    userdata = built.data
    if args.dry_run:
        # No API call at all: write the user-data and show how the openstack client would start it.
        if len(userdata) > args.max_size:
            return fail(f"user-data is {len(userdata)} bytes, over the limit of {args.max_size}")
        out = write_dry_run(args, built)
        if out is None:
            return EXIT_PROBLEM
        line = openstack.create_command(args.image, args.flavor, args.count, str(out), args.name, args.network, args.key_name,
                                        properties, args.os_cloud, args.wait, args.os_region)
        return print_dry_run(out, [line], args.json)
    cloud = _cloud(args)
    started = time.monotonic()
    try:
        servers = cloud.launch(userdata, args.image, args.flavor, count=args.count, network=args.network, key_name=args.key_name,
                               properties=properties, client_token=args.client_token, name=args.name, max_userdata=args.max_size)
        ids = [s["InstanceId"] for s in servers]
        print(f"vfarm: launched {len(ids)} server(s) at {shown_message(cloud.where)}: {shown_message(' '.join(ids))}", file=sys.stderr)
        if args.wait:
            progress = wait_reporter(started, lambda s: str(s.get("Status")), "ACTIVE")
            servers = cloud.wait_running(ids, timeout=args.wait_timeout, interval=args.wait_interval, progress=progress)
    except openstack.OpenStackError as err:
        if err.token:  # servers of this launch may run: the same token starts only what is missing
            return fail(f"{err}; retry with --client-token {err.token} to start only the rest")
        return fail(str(err))
    _print(servers, args.json)
    return EXIT_OK


def cmd_instances(args: argparse.Namespace) -> int:
    try:
        filters = openstack.parse_properties(args.tag)
        states = None if args.all_states else ("pending", "running")
        cloud = _cloud(args)
        found = cloud.instances(filters, states=states)
    except openstack.OpenStackError as err:
        return fail(str(err))
    # A server that will never run again (SHUTOFF: its final check powered it off; ERROR): why, from its console.
    verdicts = read_verdicts(cloud, found, lambda s: s.get("Status") in openstack.DEAD_STATUSES, openstack.OpenStackError)
    _print(found, args.json, verdicts if verdicts else None)
    if not found and not args.json:
        print("vfarm: no vfarm servers", file=sys.stderr)
    return EXIT_OK


def cmd_terminate(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all):
        fail("terminate: give server IDs or --all (not both)")
        return EXIT_USAGE
    try:
        filters = openstack.parse_properties(args.tag)
        cloud = _cloud(args)
        ids = [s["InstanceId"] for s in cloud.instances(filters)] if args.all else list(args.ids)
        # with IDs, every --tag is a check: a server without it stops the whole command
        changes = cloud.terminate(ids, tags=filters)
    except openstack.OpenStackError as err:
        return fail(str(err))
    gone = [c["InstanceId"] for c in changes if c["PreviousState"]["Name"] == "terminated"]
    if gone:
        print(f"vfarm: already deleted (Nova has no such server): {shown_message(' '.join(gone))}", file=sys.stderr)
    if args.json:
        print(json.dumps(redact_strings(changes), indent=2, sort_keys=True))
    elif changes:
        rows = [(c["InstanceId"], c["PreviousState"]["Name"], c["CurrentState"]["Name"]) for c in changes]
        print(table.render(("ID", "WAS", "NOW"), rows), end="")
    else:
        print("vfarm: no vfarm servers to delete", file=sys.stderr)
    return EXIT_OK


def cloud_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("OpenStack cloud and credentials (clouds.yaml, OS_CLOUD, or the OS_* variables of an openrc file)")
    g.add_argument("--os-cloud", metavar="NAME", help="the cloud's name in clouds.yaml (default: OS_CLOUD)")
    g.add_argument("--os-region", metavar="R", help="region (default: the cloud's region_name)")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        launch_targets(sub),
        "openstack",
        "build the user-data and start servers through OpenStack's API (Nova)",
        examples=["vfarm launch openstack examples/torino.yaml --image debian-12 --flavor m1.large --dry-run",
                  "vfarm launch openstack examples/torino.yaml --os-cloud site --image debian-12 --flavor m1.large --count 4 --wait"],
        description="Build the user-data of FILE in memory and start servers with Nova. Every server carries the metadata "
        f"{openstack.MANAGED_KEY}=true (plus --property) and a launch token of vfarm's own, so a retry with the same "
        "--client-token never starts a server twice.",
    )
    p.add_argument("file", metavar="FILE", help="the #multiple-config file ('-' for stdin)")
    p.add_argument("--image", required=True, metavar="IMAGE", help="image name or ID")
    p.add_argument("--flavor", required=True, metavar="FLAVOR", help="flavor name or ID")
    p.add_argument("--network", metavar="NET", help="network name or ID (default: the project's one network)")
    p.add_argument("--key-name", metavar="K", help="SSH key pair name")
    p.add_argument("--count", type=COUNT, default=1, metavar="N", help="how many servers (default 1)")
    p.add_argument("--name", default="vfarm-worker", metavar="NAME", help="server name prefix (default vfarm-worker; servers are found by metadata)")
    p.add_argument("--property", action="append", default=[], metavar="K=V", help="extra server metadata, e.g. vfarm:farm=torino; repeatable")
    p.add_argument("--client-token", metavar="T", help="launch token: the same token never starts more than --count servers")
    b = p.add_argument_group("user-data (the same options, and so the same bytes, as vfarm build)")
    add_userdata_options(b, max_size=OPENSTACK_LIMIT,
                         max_size_help=f"refuse larger user-data (default {OPENSTACK_LIMIT}: Nova's {OPENSTACK_B64_LIMIT} characters of base64)")
    p.add_argument("--wait", action="store_true", help="wait until every server is ACTIVE, with progress on stderr")
    p.add_argument("--wait-timeout", type="seconds", default=900.0, metavar="S", help="give up waiting after S seconds (default 900)")
    p.add_argument("--wait-interval", type="seconds", default=2.0, metavar="S", help="seconds between two polls while waiting (default 2)")
    p.add_argument("--dry-run", action="store_true", help="write the user-data and print the openstack server create line; call nothing")
    p.add_argument("-o", "--output", metavar="OUT", help="user-data file written by --dry-run (default: FILE's name + .userdata; stdin.userdata for -)")
    p.add_argument("--json", action="store_true", help="print the servers as JSON (with --dry-run: the user-data file and the command line)")
    cloud_args(p)
    p.set_defaults(func=cmd_launch_openstack)
