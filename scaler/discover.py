"""Discover: what the pool (htcondor2) holds, in the shape the planner reads and `--save-snapshot`
writes (the cloud's side comes from the backend, scaler/backends.py). A query that fails raises
DiscoverError: it is never read as "nothing there" (no jobs, no workers, no instances).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Iterable
from typing import Any, Optional

from .plan import ON_WORKER

# Job states the planner looks at (idle, and on a worker: running, transferring output, suspended);
# history and held jobs stay out of the snapshot. Jobs on a worker are read one by one (their
# RemoteHost is the schedd's evidence that the worker is busy); idle jobs are read as groups (the
# schedd's group-by query, `condor_q -group-by`): one ad per set of jobs equal in every projected
# attribute, with JobCount and JobIds ("1.0 ... 1.4999").
# The projection holds every attribute the planner reads of an idle job, times included, so a
# group's ad is exactly what each of its jobs' ads would have said: the plan is the same. Seen on
# HTCondor 23.9: the attributes the schedd adds because an expression names them are keys too;
# the constraint is evaluated on the group's ad (hence JobStatus among the keys); the autocluster
# query (QueryOpt.AutoCluster) is no substitute: its ads have neither the times nor JobStatus (a
# constraint on JobStatus returns no group at all).
ON_WORKER_CONSTRAINT = " || ".join(f"JobStatus == {status}" for status in ON_WORKER)
IDLE_CONSTRAINT = "JobStatus == 1"
# The job attributes the planner reads: a big queue (100,000 jobs) is read far faster with a
# projection. The schedd adds the job attributes a projected expression names (HTCondor 23.9: the
# default Requirements brings RequestDisk, FileSystemDomain...); a name still missing from every job
# (not TARGET.X, not a function) is asked for in a second query.
JOB_ATTRIBUTES = ("ClusterId", "ProcId", "JobStatus", "QDate", "EnteredCurrentStatus", "RemoteHost",
                  "RequestCpus", "RequestMemory", "RequestGPUs", "Requirements")
# The keys of the idle jobs' groups: what the planner reads of an idle job (not its id).
GROUP_ATTRIBUTES = ("JobStatus", "QDate", "EnteredCurrentStatus", "RequestCpus", "RequestMemory", "RequestGPUs", "Requirements")
EXPRESSION = re.compile(r"^/Expr\((.*)\)/$", re.S)
NAME = re.compile(r"(?<![.\w])(?:MY\.)?([A-Za-z_]\w*)(?!\s*[(.\w])")  # not TARGET.X, not f(...), MY.X as X
WORDS = {"true", "false", "undefined", "error", "is", "isnt"}


class DiscoverError(RuntimeError):
    """A query that failed; the message is one line."""


def ad_to_json(ad: Any) -> dict[str, Any]:
    """A ClassAd as `condor_q -json` / `condor_status -json` print it (expressions as strings)."""
    data: dict[str, Any] = json.loads(ad.printJson())
    return data


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def pool_snapshot(collector: str, schedd: Optional[str] = None, token_dir: Optional[str] = None) -> dict[str, Any]:
    """Jobs (every schedd the collector knows, or the one named), slots and the collector's ad."""
    if token_dir:
        os.environ["_CONDOR_SEC_TOKEN_DIRECTORY"] = token_dir
    try:
        import htcondor2
    except ImportError as err:
        raise DiscoverError(f"the htcondor Python bindings are missing (pip install htcondor): {err}") from None
    if token_dir:
        htcondor2.reload_config()
    try:
        pool = htcondor2.Collector(collector)
        slots = [ad_to_json(ad) for ad in pool.query(htcondor2.AdType.Startd)]
        collectors = [ad_to_json(ad) for ad in pool.query(htcondor2.AdType.Collector)]
    except Exception as err:  # noqa: BLE001 - any failure of the bindings is one line for the log
        raise DiscoverError(f"collector {collector}: {_one_line(err)}") from None
    try:
        if schedd:
            schedd_ads = [pool.locate(htcondor2.DaemonType.Schedd, schedd)]
        else:
            schedd_ads = list(pool.locateAll(htcondor2.DaemonType.Schedd))
    except Exception as err:  # noqa: BLE001
        raise DiscoverError(f"collector {collector}: cannot locate the schedd(s): {_one_line(err)}") from None
    if not schedd_ads:
        raise DiscoverError(f"collector {collector} knows no schedd: the queue cannot be read")
    jobs: list[dict[str, Any]] = []
    for ad in schedd_ads:
        name = ad.get("Name", "?")
        try:
            queue = htcondor2.Schedd(ad)
            for constraint, attributes, opts in ((ON_WORKER_CONSTRAINT, JOB_ATTRIBUTES, htcondor2.QueryOpt.Default),
                                                 (IDLE_CONSTRAINT, GROUP_ATTRIBUTES, htcondor2.QueryOpt.GroupBy)):
                found = [ad_to_json(job) for job in queue.query(constraint=constraint, projection=list(attributes), opts=opts)]
                named = {n for n in expression_names(found) - set(attributes) if not any(n in job for job in found)}
                if named:
                    found = [ad_to_json(job) for job in queue.query(constraint=constraint, projection=[*attributes, *sorted(named)], opts=opts)]
                jobs += found if opts is not htcondor2.QueryOpt.GroupBy else [_group(job) for job in found]
        except DiscoverError:
            raise
        except Exception as err:  # noqa: BLE001
            raise DiscoverError(f"schedd {name}: {_one_line(err)}") from None
    return {"jobs": jobs, "slots": slots, "collector": collectors}


def _group(ad: dict[str, Any]) -> dict[str, Any]:
    """A group-by ad as the snapshot carries it: without the query's own group number (Id)."""
    ad.pop("Id", None)
    if not (isinstance(ad.get("JobCount"), int) and ad.get("JobStatus") == 1):
        raise DiscoverError(f"the schedd's group of idle jobs has no JobCount or JobStatus 1: {json.dumps(ad)[:200]}")
    return ad


def expression_names(jobs: list[dict[str, Any]]) -> set[str]:
    """Every name the jobs' request and Requirements expressions use (as condor_q -json prints an expression)."""
    names: set[str] = set()
    seen: set[str] = set()
    for job in jobs:
        for key in ("RequestCpus", "RequestMemory", "RequestGPUs", "Requirements"):
            value = job.get(key)
            if isinstance(value, str) and value not in seen:
                seen.add(value)
                found = EXPRESSION.match(value)
                if found:
                    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', found.group(1))  # no names inside strings
                    names.update(n for n in NAME.findall(text) if n not in WORDS and n.upper() not in ("MY", "TARGET"))
    return names


def _iso(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def plain(instances: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Instance dicts as the JSON DescribeInstances prints (datetimes as ISO 8601)."""
    data: list[dict[str, Any]] = json.loads(json.dumps(list(instances), default=_iso))
    return data
