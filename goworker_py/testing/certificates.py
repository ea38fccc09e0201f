"""A throw-away certificate authority for test servers that serve over TLS.

etcd and Redis test servers (``tls=True``) need a server certificate for 127.0.0.1 that clients
can verify; a CA made per server, valid two days, is that without touching the machine's trust
store: clients trust :data:`CA_FILE` in the server's temp dir (``EtcdServer.ca_file``,
``RedisServer.ca_path``). The ``openssl`` command makes them, so no Python crypto package is
needed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from goworker_py.testing.errors import ZooKeeperError

#: The file names :func:`make_test_certificates` writes into its directory.
CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server-key.pem"


def make_test_certificates(
    directory: Path, *, missing: type[ZooKeeperError], failed: type[ZooKeeperError]
) -> None:
    """Write a test CA (:data:`CA_FILE`) and a server certificate for 127.0.0.1 and localhost
    signed by it (:data:`CERT_FILE`, :data:`KEY_FILE`) into ``directory``.

    Raises ``missing`` without the ``openssl`` command, ``failed`` (with openssl's message)
    when it fails: each server says it in its own error, so its fixtures skip or fail as they
    do for the rest of what it needs.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise missing(
            "a test server over TLS needs the `openssl` command (apt-get install openssl)"
        )

    def run(*args: str) -> None:
        done = subprocess.run([openssl, *args], cwd=directory, capture_output=True, text=True)
        if done.returncode != 0:
            raise failed(f"openssl {args[0]} failed: {done.stderr.strip()}")

    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca = ("-subj", "/CN=goworker-py test CA", "-keyout", "ca-key.pem", "-out", CA_FILE)
    server = ("-subj", "/CN=127.0.0.1", "-keyout", KEY_FILE, "-out", "server.csr")
    sign = ("-in", "server.csr", "-CA", CA_FILE, "-CAkey", "ca-key.pem", "-CAcreateserial")
    run("req", "-x509", *key, "-days", "2", *ca)
    run("req", *key, *server)
    run("x509", "-req", *sign, "-days", "2", "-extfile", "san.cnf", "-out", CERT_FILE)
