"""`vfarm scale`: the queue monitor's command line.

`vfarm scale FARM --snapshot SNAP.json [--json]` decides from a saved snapshot and changes nothing;
`vfarm scale FARM --once [--dry-run] [--save-snapshot FILE]` runs one live cycle (discover from the
pool and the cloud, plan, apply unless --dry-run); `vfarm scale FARM [--dry-run] [--metrics-port P]`
runs the loop until SIGTERM (SIGHUP: the farm file read again before the next cycle), with
`--http [ADDRESS:]PORT` its read-only status page (scaler/page.py, 127.0.0.1 unless an address is
given); `--status` shows the farm.

A saved snapshot replays its cycle exactly: a number in it that the snapshot reader's bounds refuse
(1e300, NaN, an infinity, an integer past 64 bits: what any pool user may put in an ad) is written
as its text, its place listed under ODD_NUMBERS, and read back as that number; the planner reads
it as it did live.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import json
import logging
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ..cc_modules import table
from ..config import condor as condor_spec
from ..config import scale as scale_spec
from ..display import ShownFormatter, shown_message
from ..files import atomic_write, read_bounded, read_stdin_bounded
from ..jsonbounds import JsonInputError, loads_bounded, within_bounds
from ..scaler import apply, backends, discover, loop, page, runlock
from ..scaler import plan as planner
from ..scaler.model import TYPE_ATTR, Action, Plan
from .common import EXIT_OK, EXIT_PROBLEM, PORT, add_command, fail, load_or_report

if TYPE_CHECKING:
    from ..config.loader import Config

# A pool's jobs and slots as condor_q/condor_status -json print them: some thousand ads of a few KiB.
MAX_SNAPSHOT = 16 * 1024 * 1024
MAX_SNAPSHOT_VALUES = 1_000_000
# A saved snapshot's places (lists of keys and indices) of the numbers written as their text.
ODD_NUMBERS = "odd_numbers"
# Such a number's text, as repr() writes it: an integer, or a float (inf, nan, 1e+300).
NUMBER_TEXT = re.compile(r"-?(?:inf|nan|\d{1,400}(?:\.\d{1,400})?(?:e[+-]?\d{1,4})?)", re.I | re.A)
Place = list[Union[str, int]]


def load_spec(path: str) -> Optional[scale_spec.ScaleSpec]:
    """The farm file's `scale` section, or None after printing why not."""
    farm = load_farm(path)
    return farm[1] if farm is not None else None


def load_farm(path: str) -> Optional[tuple[Config, scale_spec.ScaleSpec]]:
    """The farm file and its `scale` section, or None after printing why not."""
    config = load_or_report(path)
    if config is None:
        return None
    section = config.sections.get("scale")
    if section is None:
        fail(f"{path}: has no scale section: nothing to scale")
        return None
    return config, scale_spec.parse(section)


def read_snapshot(path: str) -> dict[str, Any]:
    """A snapshot file ('-' for stdin), checked; SnapshotError with a one-line reason otherwise.
    At most MAX_SNAPSHOT bytes and MAX_SNAPSHOT_VALUES values; a pipe or FIFO must deliver them
    within VFARM_IO_TIMEOUT."""
    try:
        raw = read_stdin_bounded(MAX_SNAPSHOT) if path == "-" else read_bounded(path, MAX_SNAPSHOT)
        text = raw.decode("utf-8")
    except OSError as err:
        raise planner.SnapshotError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise planner.SnapshotError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        data = loads_bounded(text, max_values=MAX_SNAPSHOT_VALUES)
    except JsonInputError as err:
        raise planner.SnapshotError(f"{path}: {err}") from None
    try:
        return planner.check_snapshot(_odd_numbers_back(data))
    except planner.SnapshotError as err:
        raise planner.SnapshotError(f"{path}: {err}") from None


def _odd_numbers_back(data: Any) -> Any:
    """DATA, a saved snapshot, with each number written as its text (ODD_NUMBERS) put back."""
    if not isinstance(data, dict) or ODD_NUMBERS not in data:
        return data
    places = data.pop(ODD_NUMBERS)
    if not isinstance(places, list):
        raise planner.SnapshotError(f"'{ODD_NUMBERS}' must be a list of places (lists of keys and indices), got {type(places).__name__}")
    for i, place in enumerate(places):
        holder: Any = data
        if isinstance(place, list) and place:
            for step in place[:-1]:
                holder = _step(holder, step)
        last = place[-1] if isinstance(place, list) and place else None
        written = _step(holder, last)
        if not (isinstance(written, str) and NUMBER_TEXT.fullmatch(written)):
            raise planner.SnapshotError(f"'{ODD_NUMBERS}[{i}]' must be the place (a list of keys and indices) of a number written as text")
        holder[last] = int(written) if written.lstrip("-").isdigit() else float(written)
    return data


def _step(holder: Any, key: Any) -> Any:
    """What HOLDER holds under KEY (an object's key, a list's index), or None."""
    if isinstance(holder, dict) and isinstance(key, str):
        return holder.get(key)
    if isinstance(holder, list) and isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(holder):
        return holder[key]
    return None


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _young(result: Plan, spec: scale_spec.ScaleSpec) -> str:
    """Idle jobs not yet demand, said beside the waiting ones (else an idle queue reads as empty)."""
    return f" (+{result.young} idle for less than waiting-time {spec.waiting_time:g}s)" if result.young else ""


def render(result: Plan, spec: scale_spec.ScaleSpec) -> str:
    """The plan as an operator reads it: the figures, the decisions, the types, then every farm instance."""
    lines = [
        f"farm {spec.name}: {result.waiting} waiting job(s){_young(result, spec)}, demand {result.demand} CPU(s), "
        f"supply {result.supply} CPU(s), {result.active} active worker(s) (min {spec.min_vms}, max {spec.max_vms}"
        + (f", max-cpus {spec.max_cpus})" if spec.max_cpus is not None else ")")
    ]
    rows = []
    for decision in result.decisions:
        target = decision.instance or (str(decision.count) if decision.action not in (Action.HOLD, Action.FORGET) else "-")
        if decision.type is not None and (spec.typed or spec.hybrid) and not decision.instance:
            target += f" {decision.type}"
        reason = decision.reason
        if decision.fallback:
            reason += "; if refused for quota or capacity: " + ", ".join(f"{o.count} {o.type}" for o in decision.fallback) + " instead"
        rows.append((decision.action.value, target, reason))
    if not rows:
        rows.append(("nothing", "-", "no instance to launch, drain or terminate"))
    out = "\n".join(lines) + "\n\n" + table.render(("ACTION", "WHAT", "REASON"), rows)
    if spec.typed or spec.hybrid:
        type_rows = []
        for t in spec.placements:
            f = result.types[t.name]
            hole = f.black_hole
            note = ("black hole, blocked" if hole.blocked else "black hole, probing" if hole.probing else
                    f"{hole.streak} lost in a row" if hole.streak else "-")
            if f.launch_backoff_until > result.now:
                note = f"back-off {f.launch_backoff_until - result.now:.0f}s" + ("" if note == "-" else f", {note}")
            most = spec.worker_type(t.kind).max  # a placement's: its type's, over all its clouds
            type_rows.append((t.name, t.cpus, t.memory if t.memory is not None else "-", t.gpus, most if most is not None else "-", f"{t.cost:g}",
                              f.active, f.waiting, f.wanted, note))
        out += "\n" + table.render(("TYPE", "CPUS", "MEMORY", "GPUS", "MAX", "COST", "ACTIVE", "JOBS", "WANTED", "LAUNCHES"), type_rows,
                                    right=("CPUS", "MEMORY", "GPUS", "MAX", "COST", "ACTIVE", "JOBS", "WANTED"))
    if result.clouds:
        cloud_rows = [(c.name, c.type, c.max if c.max is not None else "-", c.active, c.launch, c.fallback,
                       f"{c.launch_backoff_until - result.now:.0f}s" if c.launch_backoff_until > result.now else "-") for c in result.clouds.values()]
        out += "\n" + table.render(("CLOUD", "KIND", "MAX", "ACTIVE", "LAUNCH", "IF-REFUSED", "BACK-OFF"), cloud_rows,
                                    right=("MAX", "ACTIVE", "LAUNCH", "IF-REFUSED"))
    if result.instances or result.others:
        inst_rows: list[tuple[Any, ...]] = [(w.id, w.state.value, _age(w.age), w.slots, w.claimed, w.reason) for w in result.instances]
        inst_rows += [(o["instance"], o["state"] or "-", _age(o["age"]), "-", "-", o["reason"]) for o in result.others]
        out += "\n" + table.render(("INSTANCE", "STATE", "AGE", "SLOTS", "CLAIMED", "WHY"), inst_rows, right=("AGE", "SLOTS", "CLAIMED"))
    return out


def _token_dir(spec: scale_spec.ScaleSpec, farm: str, stack: contextlib.ExitStack) -> Optional[str]:
    """pool.token-file as the private token directory HTCondor reads (None: HTCondor's own)."""
    name = spec.pool.get("token-file")
    if not name:
        return None
    path = Path(farm).parent / name
    directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="vfarm-token-"))
    target = Path(directory) / "scaler"
    try:
        target.write_bytes(read_bounded(path, condor_spec.TOKEN_FILE_MAX))
    except OSError as err:
        raise discover.DiscoverError(f"pool.token-file {path}: cannot read: {err.strerror or err}") from None
    target.chmod(0o600)
    return directory


def _logger() -> logging.Logger:
    logger = logging.getLogger("vfarm.scale")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(ShownFormatter("%(asctime)s vfarm scale %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def make_backend(spec: scale_spec.ScaleSpec, farm: str, build: bool) -> apply.Backend:
    """The cloud backend of the scale section; BUILD: make the user-data (needed to launch)."""
    if not build:
        return backends.backend_for(spec, b"")
    return backends.backend_for(spec, functools.partial(_userdata, farm))


def _userdata(farm: str, spec: scale_spec.ScaleSpec) -> backends.UserData:
    """The workers' user-data for SPEC's cloud (each cloud of a hybrid farm its own: handlers,
    attachments). A farm that lists worker types and sends a condor section: one per type, whose
    startd advertises VfarmWorkerType (what a job's Requirements may name), built when first needed."""
    from ..config import loader as configuration

    try:
        config = configuration.load_file(farm)
    except configuration.ConfigError as err:
        raise apply.CloudError(f"{farm}: the workers' user-data: {err}") from None
    if not spec.typed or not isinstance(config.sections.get("condor"), dict):
        return _build(farm, config, spec)
    made: dict[str, bytes] = {}

    def of_type(worker_type: scale_spec.WorkerType) -> bytes:
        kind = worker_type.kind
        if kind not in made:
            condor = config.sections["condor"]
            typed = copy.copy(config)
            typed.sections = {**config.sections, "condor": {**condor, "attributes": {**(condor.get("attributes") or {}), TYPE_ATTR: kind}}}
            made[kind] = _build(farm, typed, spec)
        return made[kind]

    return of_type


def _build(farm: str, config: Any, spec: scale_spec.ScaleSpec) -> bytes:
    from ..mime_builder import mime

    attach: tuple[Any, ...] = ()
    if spec.cloud.get("type") == "local":  # what a local test image needs to stay up as a worker
        attach = backends.attachments(spec)
    try:
        built = mime.build(config, handlers=str(spec.cloud.get("handlers", "embed")), attach=attach)
    except mime.BuildError as err:
        raise apply.CloudError(f"{farm}: the workers' user-data: {err}") from None
    for warning in built.warnings:
        print(f"vfarm scale: warning: {shown_message(warning)}", file=sys.stderr)
    return built.data


def _parts(spec: scale_spec.ScaleSpec, farm: str, stack: contextlib.ExitStack, dry_run: bool) -> loop.Parts:
    """What a scaler of SPEC works with: the section, its cloud backend, its drain command, its token folder."""
    token_dir = _token_dir(spec, farm, stack)
    backend = make_backend(spec, farm, build=not dry_run)
    prefix = [str(a) for a in spec.pool.get("admin-command") or []]
    env = {"_CONDOR_SEC_TOKEN_DIRECTORY": token_dir} if token_dir else None
    drainer = apply.CondorDrain(spec.collector or "", prefix, env=env, log=_logger())
    return loop.Parts(spec, backend, drainer, token_dir)


def make_scaler(spec: scale_spec.ScaleSpec, args: argparse.Namespace, stack: contextlib.ExitStack, dry_run: bool,
                metrics: Optional[loop.Metrics] = None, keep_status: bool = False) -> loop.Scaler:
    parts = _parts(spec, args.farm, stack, dry_run)
    return loop.Scaler(spec, parts.backend, parts.drainer, _logger(), token_dir=parts.token_dir, dry_run=dry_run, metrics=metrics,
                       keep_status=keep_status)


def render_status(rows: list[dict[str, Any]], spec: scale_spec.ScaleSpec, result: Plan) -> str:
    head = (f"farm {spec.name}: {len(rows)} instance(s), {result.waiting} waiting job(s){_young(result, spec)}, "
            f"demand {result.demand} CPU(s), supply {result.supply} CPU(s)\n")
    if spec.hybrid:
        counts = loop.cloud_counts(rows, spec)
        head += "".join(f"cloud {name}: {', '.join(f'{n} {state}' for state, n in sorted(of.items())) or 'no instance'}\n"
                        for name, of in counts.items())
    if not rows:
        return head + "no instance\n"
    if spec.hybrid:
        hybrid = [(r["instance"], r["cloud"] or "-", r["type"], r["state"], _age(r["age"]), r["slots"], r["jobs"], r["reason"], r.get("verdict") or "-")
                  for r in rows]
        return head + "\n" + table.render(("INSTANCE", "CLOUD", "TYPE", "STATE", "AGE", "SLOTS", "JOBS", "WHY", "VERDICT"), hybrid,
                                          right=("AGE", "SLOTS", "JOBS"))
    if spec.typed:
        typed = [(r["instance"], r["type"], r["state"], _age(r["age"]), r["slots"], r["jobs"], r["reason"], r.get("verdict") or "-") for r in rows]
        return head + "\n" + table.render(("INSTANCE", "TYPE", "STATE", "AGE", "SLOTS", "JOBS", "WHY", "VERDICT"), typed, right=("AGE", "SLOTS", "JOBS"))
    body = [(r["instance"], r["state"], _age(r["age"]), r["slots"], r["jobs"], r["reason"], r.get("verdict") or "-") for r in rows]
    return head + "\n" + table.render(("INSTANCE", "STATE", "AGE", "SLOTS", "JOBS", "WHY", "VERDICT"), body, right=("AGE", "SLOTS", "JOBS"))


def _scaler_here(here: dict[str, Any]) -> str:
    if not here["running"]:
        return "scaler: no vfarm scale of this farm runs on this host\n"
    who = f"pid {here['pid']}" if here["pid"] else "a vfarm scale"
    return f"scaler: {who} runs this farm on this host\n"


def _status(scaler: loop.Scaler, spec: scale_spec.ScaleSpec, as_json: bool) -> int:
    snapshot = scaler.discover()
    snapshot.update(scaler.memory())
    result = planner.plan(snapshot, spec)
    status = loop.status_document(result, snapshot, spec, scaler.applier.read_verdict)  # the status page's too
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render_status(status["instances"], spec, result) + _scaler_here(status["scaler_here"]), end="")
    return EXIT_OK


def _unfit_for_live_cycles(farm: str, config: Config, spec: scale_spec.ScaleSpec, dry_run: bool) -> Optional[str]:
    """Why the farm file cannot drive live cycles (at the start and on a reload), or None. A replay needs neither."""
    if not spec.collector:
        return f"{farm}: the scale section has no pool.collector: live cycles read the queue from it"
    if not dry_run and not config.sent_sections():
        return f"{farm}: no section for the workers (localfs, cvmfs, condor...): their user-data would be empty"
    return None


def _workers_inputs(config: Config) -> str:
    """A digest of what the workers' user-data is made of: the sections sent and the files they name."""
    from ..mime_builder import mime

    digest = hashlib.sha256(json.dumps(config.sent_sections(), sort_keys=True, default=str).encode())
    for path, what in mime.inputs_of(config, ()):
        if what != "the config file":
            try:
                digest.update(read_bounded(path, condor_spec.TOKEN_FILE_MAX))
            except OSError as err:
                digest.update(f"unreadable: {err}".encode())
    return digest.hexdigest()


def _reloading(args: argparse.Namespace, config: Config, dry_run: bool, hangup: threading.Event) -> loop.Reload:
    """How the loop reads the farm file again (SIGHUP: HANGUP): the start's checks, every problem
    as one ReloadError (the file's FILE:LINE:COL lines joined), its warnings logged. A reload's
    token folder is removed once the next reload is taken, or at once when it is not."""
    taken = {"inputs": _workers_inputs(config)}
    stacks: dict[str, Optional[contextlib.ExitStack]] = {"current": None, "pending": None}

    def read() -> loop.Parts:
        from ..config import loader as configuration

        if args.farm == "-":
            raise loop.ReloadError("the farm file came from stdin: there is nothing to read again")
        try:
            config = configuration.load_file(args.farm)
        except configuration.ConfigError as err:
            raise loop.ReloadError("; ".join(str(p) for p in err.problems[:5]) + (" ..." if len(err.problems) > 5 else "")) from None
        for warning in config.warnings:
            _logger().warning("%s", warning)
        section = config.sections.get("scale")
        if section is None:
            raise loop.ReloadError(f"{args.farm}: has no scale section any more")
        spec = scale_spec.parse(section)
        unfit = _unfit_for_live_cycles(args.farm, config, spec, dry_run)
        if unfit:
            raise loop.ReloadError(unfit)
        inputs = _workers_inputs(config)
        stack = stacks["pending"] = contextlib.ExitStack()
        try:
            parts = _parts(spec, args.farm, stack, dry_run)
        except (discover.DiscoverError, apply.CloudError) as err:  # the token file; the workers' user-data
            raise loop.ReloadError(str(err)) from None
        same = inputs == taken["inputs"]
        taken["next"] = inputs
        return parts._replace(same_userdata=same)

    def settled(spec: Optional[scale_spec.ScaleSpec]) -> None:
        old, new = (stacks["pending"], stacks["current"]) if spec is None else (stacks["current"], stacks["pending"])
        if spec is not None:
            taken["inputs"] = taken.pop("next", taken["inputs"])
        stacks["current"], stacks["pending"] = new, None
        if old is not None:
            old.close()

    return loop.Reload(read, asked=hangup, settled=settled)


def _run_loop(scaler: loop.Scaler, metrics: Optional[loop.Metrics], port: Optional[int], http: Optional[tuple[str, int]] = None,
              reload: Optional[loop.Reload] = None) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        scaler.log.info("%s: stopping after this cycle", signal.Signals(signum).name)
        stop.set()

    def on_hangup(_signum: int, _frame: Any) -> None:
        scaler.log.info("SIGHUP: reading the farm file again before the next cycle")
        if reload is not None:
            reload.ask()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGHUP, on_hangup)  # cmd_scale's (a flag only, since the start) is put back after
    server = None
    stop_page = None
    try:
        if metrics is not None and port is not None:
            try:
                server = metrics.serve(port)
            except OSError as err:
                return fail(f"--metrics-port {port}: cannot listen on 127.0.0.1: {err.strerror or err}")
            scaler.log.info("metrics on http://127.0.0.1:%d/metrics", port)
        if http is not None:
            try:
                _, stop_page = page.serve(http, scaler.history, scaler.spec.name, scaler.log)
            except OSError as err:
                return fail(f"--http {http[0]}:{http[1]}: cannot listen: {err.strerror or err}")
            host = f"[{http[0]}]" if ":" in http[0] else http[0]
            scaler.log.info("status page on http://%s:%d/", host, http[1])
        scaler.loop(stop, reload=reload)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
        if stop_page is not None:
            stop_page()
    return EXIT_OK


def cmd_scale(args: argparse.Namespace) -> int:
    farm = load_farm(args.farm)
    if farm is None:
        return EXIT_PROBLEM
    config, spec = farm
    if args.snapshot and (args.once or args.save_snapshot or args.status or args.metrics_port is not None):
        return fail("--snapshot decides from a saved snapshot: it does not go with --once, --status, --save-snapshot or --metrics-port")
    if args.status and (args.once or args.dry_run or args.save_snapshot):
        return fail("--status only looks: it does not go with --once, --dry-run or --save-snapshot")
    if args.save_snapshot and not args.once:
        return fail("--save-snapshot goes with --once")
    if args.metrics_port is not None and (args.once or args.status):
        return fail("--metrics-port serves the metrics of the loop: it does not go with --once or --status")
    http: Optional[tuple[str, int]] = None
    if args.http is not None:
        if args.once or args.status or args.snapshot:
            return fail("--http serves the status page of the loop: it does not go with --once, --status or --snapshot")
        try:
            http = page.parse_address(args.http)
        except page.AddressError as err:
            return fail(f"--http: {err}")
    if args.json and not (args.once or args.status or args.snapshot):
        return fail("--json prints one plan or status: it goes with --once, --status or --snapshot (the loop logs)")
    if args.snapshot:
        try:
            snapshot = read_snapshot(args.snapshot)
        except planner.SnapshotError as err:
            return fail(str(err))
        try:
            result = planner.plan(snapshot, spec)
        except planner.SnapshotError as err:  # what only planning finds (a job entry's JobCount)
            return fail(f"{args.snapshot}: {err}")
        return _print_plan(result, spec, args.json)
    dry_run = bool(args.dry_run) or bool(args.status)
    unfit = _unfit_for_live_cycles(args.farm, config, spec, dry_run)  # said before anything is contacted
    if unfit:
        return fail(unfit)
    # A SIGHUP from here on is a reload request (else it would end the process while the user-data is built).
    hangup = threading.Event()
    previous_hangup = signal.signal(signal.SIGHUP, lambda _signum, _frame: hangup.set()) if not (args.once or args.status) else None
    try:
        with contextlib.ExitStack() as stack:
            if not dry_run:  # a scaler that may change the farm: one per farm on this host
                stack.enter_context(runlock.hold(spec.name))
            # --once is one cycle of the loop: it records the same metrics (nothing serves them).
            metrics = loop.Metrics(spec.name, [c.name for c in spec.clouds]) if args.metrics_port is not None or args.once else None
            scaler = make_scaler(spec, args, stack, dry_run, metrics, keep_status=http is not None)
            if args.status:
                return _status(scaler, spec, args.json)
            if not args.once:
                return _run_loop(scaler, metrics, args.metrics_port, http, _reloading(args, config, dry_run, hangup))
            save = functools.partial(_save_snapshot, args.save_snapshot) if args.save_snapshot else None
            cycled = scaler.cycle(save=save, strict=True)  # exactly one cycle of the loop
            assert cycled is not None  # strict: a skipped cycle raised
            applied = scaler.outcome.to_json() if scaler.outcome is not None and not dry_run else None
    except (discover.DiscoverError, apply.CloudError, planner.SnapshotError, runlock.RunLockError) as err:
        return fail(str(err))
    finally:
        if previous_hangup is not None:
            signal.signal(signal.SIGHUP, previous_hangup)
    return _print_plan(cycled, spec, args.json, warn=False, applied=applied)


def _save_snapshot(path: str, snapshot: dict[str, Any]) -> None:
    try:
        atomic_write(path, json.dumps(_odd_numbers_as_text(snapshot), indent=1, sort_keys=True) + "\n")
    except OSError as err:
        raise planner.SnapshotError(f"{path}: cannot write: {err.strerror or err}") from None


def _odd_numbers_as_text(snapshot: dict[str, Any]) -> dict[str, Any]:
    """SNAPSHOT as it is saved: each number the snapshot reader's bounds refuse written as its
    text, its place listed under ODD_NUMBERS (a copy then; SNAPSHOT itself otherwise)."""
    places: list[Place] = []
    stack: list[tuple[Place, Any]] = [([], snapshot)]
    while stack:
        path, value = stack.pop()
        for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
            if isinstance(item, (dict, list)):
                stack.append(([*path, key], item))
            elif isinstance(item, (int, float)) and not isinstance(item, bool) and not within_bounds(item):
                places.append([*path, key])
    if not places:
        return snapshot
    saved = copy.deepcopy(snapshot)
    for place in places:
        holder: Any = saved
        for step in place[:-1]:
            holder = holder[step]
        holder[place[-1]] = repr(holder[place[-1]])
    saved[ODD_NUMBERS] = places
    return saved


def _print_plan(result: Plan, spec: scale_spec.ScaleSpec, as_json: bool, warn: bool = True, applied: Optional[dict[str, Any]] = None) -> int:
    if warn:
        for warning in result.warnings:
            print(f"vfarm: warning: {shown_message(warning)}", file=sys.stderr)
    if as_json:
        data = result.to_json()
        if applied is not None:
            data["applied"] = applied
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render(result, spec), end="")
    return EXIT_OK


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "scale", "the queue monitor: launch, drain and terminate workers from the HTCondor queue",
                    description="Watch the HTCondor pool of FARM's scale section and keep its farm the size the queue needs: launch "
                                "workers of the types the waiting jobs fit, drain idle ones gracefully and terminate them once "
                                "drained, every check-every (15 s by default), until SIGTERM; SIGHUP reads FARM again before the next "
                                "cycle. --snapshot decides from a saved snapshot and changes nothing; --status only shows the "
                                "farm. One scaler that may change a farm runs on a host at a time: a second is refused while the "
                                "first runs.",
                    examples=["vfarm scale examples/hybrid.yaml --snapshot examples/hybrid-snapshot.json",
                              "vfarm scale examples/hybrid.yaml --snapshot examples/hybrid-snapshot.json --json",
                              "vfarm scale examples/hybrid.yaml --status",
                              "vfarm scale examples/hybrid.yaml --once --dry-run",
                              "vfarm scale examples/hybrid.yaml --http 8080 --metrics-port 9100"])
    p.add_argument("farm", metavar="FARM", help="the farm file (its scale section)")
    p.add_argument("--snapshot", metavar="SNAP.json", help="decide from a saved snapshot ('-' for stdin) and change nothing")
    p.add_argument("--once", action="store_true", help="run one live cycle (discover, plan, apply) instead of the loop")
    p.add_argument("--dry-run", action="store_true", help="decide, print, change nothing")
    p.add_argument("--save-snapshot", metavar="FILE", help="write what the live cycle saw, for a later --snapshot")
    p.add_argument("--json", action="store_true", help="print the plan (or --status) as JSON: with --once, --status or --snapshot")
    p.add_argument("--status", action="store_true", help="print the farm: instance, state, age, slots, jobs (changes nothing)")
    p.add_argument("--metrics-port", type=PORT, metavar="PORT", help="serve Prometheus metrics on 127.0.0.1:PORT while the loop runs")
    p.add_argument("--http", metavar="[ADDRESS:]PORT",
                   help="serve the read-only status page (and its JSON) while the loop runs; on 127.0.0.1 unless ADDRESS is given")
    p.set_defaults(func=cmd_scale)
