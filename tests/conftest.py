"""Shared test set-up. Fixtures of each area live in tests/fixtures/ and are listed here."""

pytest_plugins: list[str] = [
    "tests.fixtures.cloudinit",
    "tests.fixtures.check",
    "tests.fixtures.moto",
    "tests.fixtures.openstack",
    "tests.fixtures.condor_pool",
    "tests.fixtures.vm",
]
