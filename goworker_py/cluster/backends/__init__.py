"""The coordination backends behind :mod:`goworker_py.cluster.backend`, one module or folder
each: ``zookeeper`` (kazoo), ``etcd`` (etcd v3), ``redis`` (redis-py) and ``memory``
(in-process). Only a backend's own module imports its client library."""
