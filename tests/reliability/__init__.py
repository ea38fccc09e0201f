"""The reliability suite (issue #4): real faults against worker processes and real ZooKeeper.

See ``RELIABILITY.md`` for the scenarios; :mod:`.harness` runs them, :mod:`.checker` judges
their histories independently of the framework.
"""
