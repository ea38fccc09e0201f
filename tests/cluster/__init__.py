"""Cluster-mode tests against a real ZooKeeper (issue #3)."""
