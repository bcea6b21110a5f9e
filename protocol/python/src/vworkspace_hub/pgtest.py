"""A throwaway PostgreSQL server for tests and local development.

``initdb`` + ``pg_ctl`` in a directory of its own, listening on 127.0.0.1 (and
a Unix socket in that directory), trust authentication, no fsync. PostgreSQL
refuses to run as root, so under root the server runs as the ``postgres``
user (Debian's package creates it) or ``nobody``.

    python -m vworkspace_hub.pgtest DIR     # prints a conninfo line, serves until stdin closes

The binaries come from ``$VWS_PG_BIN``, ``/usr/lib/postgresql/<newest>/bin``
or ``PATH``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable


class PgUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bin_dir() -> str:
    env = os.environ.get("VWS_PG_BIN")
    if env:
        return env
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    for d in reversed(dirs):
        if os.path.exists(os.path.join(d, "pg_ctl")):
            return d
    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(os.path.realpath(found))
    raise PgUnavailable("PostgreSQL server binaries not found (apt-get install postgresql, or set VWS_PG_BIN)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> tuple[Callable[[], None] | None, int, int]:
    if os.geteuid() != 0:
        return None, os.getuid(), os.getgid()
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        uid, gid = pw.pw_uid, pw.pw_gid

        def drop() -> None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        return drop, uid, gid
    raise PgUnavailable("running as root and neither a postgres nor a nobody user exists")


@dataclass
class PgServer:
    root: str
    port: int
    bin_dir: str
    owned_root: bool

    @property
    def conninfo(self) -> str:
        return self.conninfo_for("postgres")

    def conninfo_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=10"

    @classmethod
    def start(cls, root: str | None = None) -> "PgServer":
        bin_dir = find_bin_dir()
        owned = root is None
        root = root or tempfile.mkdtemp(prefix="vws-pg-")
        os.makedirs(root, exist_ok=True)
        drop, uid, gid = _run_as()
        data, sock = os.path.join(root, "data"), os.path.join(root, "sock")
        os.makedirs(sock, exist_ok=True)
        for p in (root, sock):
            os.chown(p, uid, gid)
            os.chmod(p, 0o700)
        kw: dict[str, Any] = {"preexec_fn": drop, "stdin": subprocess.DEVNULL, "cwd": root,
                              "env": {**os.environ, "LC_ALL": "C", "LANG": "C"}}
        subprocess.run([os.path.join(bin_dir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, **kw)
        port = _free_port()
        log = os.path.join(root, "postgres.log")
        opts = f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c synchronous_commit=off -c max_connections=100"
        subprocess.run([os.path.join(bin_dir, "pg_ctl"), "-D", data, "-l", log, "-o", opts, "-w", "-t", "60",
                        "start"], check=True, capture_output=True, **kw)
        return cls(root, port, bin_dir, owned)

    def create_database(self, name: str) -> str:
        """A fresh database; returns its conninfo."""
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}"')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.conninfo_for(name)

    def stop(self) -> None:
        drop, _, _ = _run_as()
        subprocess.run([os.path.join(self.bin_dir, "pg_ctl"), "-D", os.path.join(self.root, "data"), "-m", "fast",
                        "-w", "-t", "30", "stop"], capture_output=True, preexec_fn=drop, stdin=subprocess.DEVNULL,
                       cwd=self.root)
        if self.owned_root:
            shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    server = PgServer.start(argv[1])
    try:
        print(server.conninfo, flush=True)
        sys.stdin.read()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
