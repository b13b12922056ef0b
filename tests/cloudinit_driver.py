"""Runs inside a subprocess with ONE real cloud-init release on sys.path (see tests/fixtures/cloudinit.py):
the init stage's user-data walk (`Init.consume_data`, as `cloud-init init` runs it) and the config
module loader (`Modules.run_section`), against vfarm's part-handlers and config modules.

Input: env DRIVER_DIR (a temp dir holding cloud.cfg written by the test); output: JSON on stdout.
Every log line of the run goes to DRIVER_DIR/cloud-init.log.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def main() -> None:
    work = Path(os.environ["DRIVER_DIR"])
    from cloudinit import settings, stages
    from cloudinit.config.modules import Modules

    try:  # 25.1 defines the DEPRECATED level at start-up; 22.4 has none
        from cloudinit.log import loggers

        loggers.define_extra_loggers()
    except ImportError:
        pass
    # After the imports: importing cloudinit resets the root logger's handlers.
    handler = logging.FileHandler(work / "cloud-init.log")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    cfg_file = str(work / "cloud.cfg")
    # Our cloud.cfg stands in for /etc/cloud/cloud.cfg: cloud-init re-reads that file whenever
    # it resets its config (after finding the datasource), which would drop an extra file.
    stages.CLOUD_CONFIG = cfg_file
    init = stages.Init(ds_deps=[])
    init.read_cfg()
    init.initialize()
    init.fetch(existing="trust")
    init.instancify()
    init.update()
    init.consume_data(settings.PER_INSTANCE)
    log_dir = Path(os.environ["VFARM_LOG_DIR"])
    after_parts = {p.name: json.loads(p.read_text()) for p in sorted(log_dir.glob("*.status.json"))}
    modules = Modules(init)
    ran, failures = modules.run_section("cloud_config_modules")
    after_modules = {p.name: json.loads(p.read_text()) for p in sorted(log_dir.glob("*.status.json"))}
    json.dump({
        "instance_id": init.datasource.get_instance_id(),
        "after_parts": after_parts,
        "ran": ran,
        "failures": [[name, repr(err)] for name, err in failures],
        "after_modules": after_modules,
        "cc_localfs": sys.modules["cc_localfs"].__file__ if "cc_localfs" in sys.modules else None,
    }, sys.stdout)


if __name__ == "__main__":
    main()
