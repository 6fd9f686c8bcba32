"""Shared pytest setup. Fixture plugins live in tests/fixtures/."""
