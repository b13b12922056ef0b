"""`vfarm launch ec2`, `vfarm instances`, `vfarm terminate`: the EC2 life cycle of vfarm's workers.

Every failure is one line on stderr and exit 1 (see ec2.Ec2Error); nothing prints a key.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Optional

from ..cc_modules import table
from ..clouds import ec2
from ..display import shown_message
from ..mime_builder.limits import EC2_LIMIT
from ..redaction import redact_strings
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


def print_instances(instances: list[dict[str, Any]], as_json: bool, verdicts: Optional[dict[str, str]] = None,
                    headers: tuple[str, ...] = ec2.SUMMARY_HEADERS, row: Callable[[dict[str, Any]], tuple[str, ...]] = ec2.summary_row) -> None:
    """The table (HEADERS, a ROW per instance) or JSON; VERDICTS: a VERDICT column (id: what the
    instance's final check said)."""
    if as_json:
        print(json.dumps(redact_strings(instances), indent=2, default=str, sort_keys=True))
    elif instances and verdicts is not None:
        print(table.render((*headers, "VERDICT"), [(*row(i), verdicts.get(i["InstanceId"], "-")) for i in instances]), end="")
    elif instances:
        print(table.render(headers, [row(i) for i in instances]), end="")


def read_verdicts(cloud: Any, instances: list[dict[str, Any]], ended: Callable[[dict[str, Any]], bool],
                  unreadable: type[Exception]) -> dict[str, str]:
    """For each instance ENDED says ended or is ending, its final check's verdict from CLOUD's
    console output (cloud.verdict), as one line; each such instance also gets `VfarmVerdict` (the
    record, or None) for --json. A console the cloud does not give (UNREADABLE) is said so, and the
    listing goes on."""
    found: dict[str, str] = {}
    for inst in instances:
        if not ended(inst):
            continue
        iid = inst["InstanceId"]
        try:
            verdict = cloud.verdict(iid)
        except unreadable as err:
            found[iid] = f"unknown: {err}"
            inst["VfarmVerdict"] = {"unreadable": str(err)}
            continue
        found[iid] = verdict.text() if verdict is not None else "none on the console (the check did not finish)"
        inst["VfarmVerdict"] = verdict.as_dict() if verdict is not None else None
    return found


def _cloud(args: argparse.Namespace) -> ec2.Ec2Cloud:
    params = ec2.Ec2Params.resolve(endpoint_url=args.endpoint_url, region=args.region, profile=args.profile)
    return ec2.Ec2Cloud(params)


def cmd_launch_ec2(args: argparse.Namespace) -> int:
    misused = output_without_dry_run(args, "launch ec2")
    if misused is not None:
        return misused
    try:
        tags = ec2.parse_tags(args.tag)
        request = ec2.run_request(
            args.image_id, args.instance_type, args.count, tags, args.key_name, args.security_group, args.subnet, args.client_token
        )
        params = ec2.Ec2Params.resolve(endpoint_url=args.endpoint_url, region=args.region, profile=args.profile)
    except ec2.Ec2Error as err:
        return fail(str(err))
    built = build_userdata(args, "launch")
    if built is None:
        return EXIT_PROBLEM
    userdata = built.data
    if args.dry_run:
        # No API call at all: write the user-data and show how the classic tools would launch it.
        out = write_dry_run(args, built)
        if out is None:
            return EXIT_PROBLEM
        # The endpoint's credentials are hidden in them (cli_equivalents); a client token is not a secret.
        return print_dry_run(out, ec2.cli_equivalents(request, str(out), userdata, params), args.json)
    cloud = ec2.Ec2Cloud(params)
    started = time.monotonic()
    try:
        instances = cloud.launch(
            userdata,
            args.image_id,
            args.instance_type,
            count=args.count,
            tags=tags,
            key_name=args.key_name,
            security_groups=args.security_group,
            subnet=args.subnet,
            client_token=args.client_token,
            max_userdata=args.max_size,
        )
        ids = [i["InstanceId"] for i in instances]
        print(f"vfarm: launched {len(ids)} instance(s) at {shown_message(cloud.endpoint)}: {shown_message(' '.join(ids))}", file=sys.stderr)
        if args.wait:
            progress = wait_reporter(started, lambda i: str(i.get("State", {}).get("Name", "?")), "running")
            instances = cloud.wait_running(ids, timeout=args.wait_timeout, interval=args.wait_interval, progress=progress)
    except ec2.Ec2Error as err:
        return fail(str(err))
    print_instances(instances, args.json)
    return EXIT_OK


def _on_openstack(args: argparse.Namespace) -> bool:
    return bool(args.cloud == "openstack" or args.os_cloud or args.os_region)


def cmd_instances(args: argparse.Namespace) -> int:
    if _on_openstack(args):
        from . import openstack

        return openstack.cmd_instances(args)
    try:
        tag_filters = ec2.parse_tags(args.tag)
        cloud = _cloud(args)
        found = cloud.instances(tag_filters, states=None if args.all_states else ec2.LIVE_STATES)
    except ec2.Ec2Error as err:
        return fail(str(err))
    verdicts = read_verdicts(cloud, found, lambda i: i.get("State", {}).get("Name") in ec2.GONE_STATES, ec2.Ec2Error)
    print_instances(found, args.json, verdicts if verdicts else None)
    if not found and not args.json:
        print("vfarm: no vfarm instances", file=sys.stderr)
    return EXIT_OK


def cmd_terminate(args: argparse.Namespace) -> int:
    if _on_openstack(args):
        from . import openstack

        return openstack.cmd_terminate(args)
    if bool(args.ids) == bool(args.all):
        fail("terminate: give instance IDs or --all (not both)")
        return EXIT_USAGE
    try:
        cloud = _cloud(args)
        tags = ec2.parse_tags(args.tag)
        if args.all:
            ids = [i["InstanceId"] for i in cloud.instances(tags, states=("pending", "running", "stopping", "stopped"))]
        else:
            ids = list(args.ids)
        # with IDs, every --tag is a check: an ID without it stops the whole command
        changes = cloud.terminate(ids, tags=tags)
    except ec2.Ec2Error as err:
        return fail(str(err))
    if args.json:
        print(json.dumps(redact_strings(changes), indent=2, sort_keys=True))
    elif changes:
        rows = [(c["InstanceId"], c.get("PreviousState", {}).get("Name", "?"), c.get("CurrentState", {}).get("Name", "?")) for c in changes]
        print(table.render(("ID", "WAS", "NOW"), rows), end="")
    else:
        print("vfarm: no vfarm instances to terminate", file=sys.stderr)
    return EXIT_OK


def _cloud_choice(p: argparse.ArgumentParser) -> None:
    """`--cloud ec2|openstack` and the OpenStack options (which imply --cloud openstack)."""
    from .openstack import cloud_args

    p.add_argument("--cloud", choices=("ec2", "openstack"), default="ec2", help="which API (default ec2; --os-cloud implies openstack)")
    cloud_args(p)


def _endpoint_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("EC2 endpoint and credentials (also boto3's usual chain and EC2_URL, EC2_ACCESS_KEY, EC2_SECRET_KEY)")
    g.add_argument("--endpoint-url", metavar="URL", help="EC2 API endpoint (default: EC2_URL, then boto3's settings)")
    g.add_argument("--region", metavar="R", help="region (with an endpoint of its own and no region: us-east-1)")
    g.add_argument("--profile", metavar="P", help="profile in the AWS config/credentials files")
    p.add_argument("--json", action="store_true",
                   help="print the instances as JSON, as the EC2 API describes them (launch --dry-run: the user-data file and the command lines)")


def launch_targets(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-commands of `vfarm launch` (ec2, local), creating `launch` only once whichever
    module registers first."""
    launch = sub.choices.get("launch")
    if launch is None:
        launch = add_command(sub, "launch", "launch workers from a config file (on an EC2 API, OpenStack or local qemu)",
                             description="Build a config file's user-data and start workers with it: through an EC2 API (AWS, "
                                         "Eucalyptus), OpenStack's Nova, or in a local qemu VM. `vfarm launch TARGET --help` for each.",
                             exit_codes="")
        launch.add_subparsers(dest="launch_target", metavar="TARGET", required=True)
    for action in launch._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("vfarm launch has no targets")  # only if a module registered it without sub-commands


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(launch_targets(sub), "ec2",
                    "build the user-data and start instances through an EC2 API (AWS, Eucalyptus; OpenStack: vfarm launch openstack)",
                    description="Build the user-data of FILE in memory and start instances with RunInstances. Every instance is "
                                f"tagged {ec2.MANAGED_TAG}=true (plus --tag) and terminates itself when it powers off.",
                    examples=["vfarm launch ec2 examples/torino.yaml --image-id ami-0123456789abcdef0 --instance-type m5.xlarge --handlers baked --dry-run",
                              "vfarm launch ec2 examples/torino.yaml --image-id ami-0123456789abcdef0 --instance-type m5.xlarge "
                              "--handlers include=https://handlers.example.org/vfarm/ --pin --count 4 --tag vfarm:farm=torino --wait"])
    p.add_argument("file", metavar="FILE", help="the #multiple-config file ('-' for stdin)")
    p.add_argument("--image-id", required=True, metavar="ID", help="the image (AMI or EMI) to start")
    p.add_argument("--instance-type", required=True, metavar="TYPE", help="the instance type, e.g. m5.xlarge")
    p.add_argument("--count", type=COUNT, default=1, metavar="N", help="how many instances (default 1)")
    p.add_argument("--key-name", metavar="K", help="SSH key pair name")
    p.add_argument("--security-group", action="append", default=[], metavar="G", help="group name, or ID (sg-...); repeatable")
    p.add_argument("--subnet", metavar="S", help="subnet ID (VPC)")
    p.add_argument("--tag", action="append", default=[], metavar="K=V", help="extra tag; repeatable")
    p.add_argument("--client-token", metavar="T", help="idempotency token: the same token never launches twice")
    b = p.add_argument_group("user-data (the same options, and so the same bytes, as vfarm build)")
    add_userdata_options(b, max_size_help=f"refuse larger user-data (default {EC2_LIMIT}: AWS; more on some EC2-compatible clouds)")
    p.add_argument("--wait", action="store_true", help="wait until every instance runs, with progress on stderr")
    p.add_argument("--wait-timeout", type="seconds", default=900.0, metavar="S", help="give up waiting after S seconds (default 900)")
    p.add_argument("--wait-interval", type="seconds", default=5.0, metavar="S", help="seconds between two polls while waiting (default 5)")
    p.add_argument("--dry-run", action="store_true", help="write the user-data and print the euca2ools / aws CLI lines; call nothing")
    p.add_argument("-o", "--output", metavar="OUT", help="user-data file written by --dry-run (default: FILE's name + .userdata; stdin.userdata for -)")
    _endpoint_args(p)
    p.set_defaults(func=cmd_launch_ec2)

    p = add_command(sub, "instances", f"list vfarm's instances on an EC2 API (tag {ec2.MANAGED_TAG}=true) or OpenStack (metadata)",
                    examples=["vfarm instances --endpoint-url http://127.0.0.1:5000 --region us-east-1",
                              "vfarm instances --tag vfarm:farm=torino --json", "vfarm instances --os-cloud site --all-states"])
    p.add_argument("--tag", action="append", default=[], metavar="K=V", help="only instances with this tag (OpenStack: metadata) too; repeatable")
    p.add_argument("--all-states", action="store_true", help="include terminated instances (OpenStack: stopped and failed servers)")
    _cloud_choice(p)
    _endpoint_args(p)
    p.set_defaults(func=cmd_instances)

    p = add_command(sub, "terminate", "terminate vfarm's instances on an EC2 API or OpenStack (never others)",
                    description="Terminate the instances named (or, with --all, every vfarm instance, narrowed by --tag); an "
                                f"instance without the {ec2.MANAGED_TAG}=true tag (OpenStack: metadata) is never touched. With IDs, "
                                "--tag is a check: if any ID lacks one of the tags (OpenStack: metadata), nothing is terminated (exit 1).",
                    examples=["vfarm terminate i-0123456789abcdef0", "vfarm terminate --all --tag vfarm:farm=torino",
                              "vfarm terminate i-0123456789abcdef0 --tag vfarm:farm=torino", "vfarm terminate --os-cloud site --all"])
    p.add_argument("ids", nargs="*", metavar="ID", help="an instance (server) ID")
    p.add_argument("--all", action="store_true", help="every vfarm instance (narrowed by --tag)")
    p.add_argument("--tag", action="append", default=[], metavar="K=V",
                   help="with --all: only instances with this tag; with IDs: refuse them all unless each has it; repeatable")
    _cloud_choice(p)
    _endpoint_args(p)
    p.set_defaults(func=cmd_terminate)
