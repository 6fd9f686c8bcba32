"""Shared pytest setup. Fixture plugins live in tests/fixtures/."""

pytest_plugins = ["tests.fixtures.cluster", "tests.fixtures.vmcluster", "tests.fixtures.hooknode"]
