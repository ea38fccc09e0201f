"""Coordination backends other than ZooKeeper, one folder or module each (see
:mod:`goworker_py.cluster.backend` for the seam they implement). Each imports its client library
itself, lazily, so a missing extra costs nothing until that backend is chosen."""
