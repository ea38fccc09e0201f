"""Shared pytest configuration: real-ZooKeeper fixtures for every test."""

pytest_plugins = ["goworker_py.testing.pytest_plugin"]
