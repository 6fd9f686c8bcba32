"""Shared pytest setup. Fixture plugins live in tests/fixtures/."""

pytest_plugins = ["tests.fixtures.cluster", "tests.fixtures.vmcluster", "tests.fixtures.hooknode"]

# The cluster test files that take longest (measured: docs/testing.md) run first: under pytest-xdist with
# --dist loadfile a worker takes whole files in collection order, so the long poles start at once and the
# short files fill the gaps. Within a file the order stays as written.
SLOW_FIRST = ("test_checkpoint_multi.py", "test_checkpoint.py", "test_checkpoint_command.py", "test_vm_jobs.py",
              "test_debian_guest.py", "test_shares.py", "test_mounts_virtiofs.py", "test_private_networks.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)
    items.sort(key=rank)
