"""A throw-away PostgreSQL 15 cluster for tests and scripts: initdb in a temp folder owned by the postgres user
(the server refuses to run as root), listening on 127.0.0.1 on a free port, password authentication for a
`monitor` role. stop()/start() keep the data (the outage tests), kill() removes everything."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from testkit.rtsp import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "monitor"
DATABASE = "monitor"


def _as_postgres() -> list[str]:
    """Run a command as the postgres user when we are root (the server refuses root); as ourselves otherwise."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class Postgres:
    """One cluster: .dsn (no password in it), .password, .password_file, .port; start()/stop()/kill()."""

    def __init__(self, root: Path | None = None, port: int | None = None, password: str = "s3cret-pw") -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.root / "data"
        self.port = port or free_port()
        self.password = password
        self.password_file = self.root / "pg-password"
        self.log = self.root / "postgres.log"
        self.dsn = f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def init(self) -> Postgres:
        self.root.mkdir(parents=True, exist_ok=True)
        self._chown(self.root)
        os.chmod(self.root, 0o755)
        pwfile = self.root / "initdb-pw"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        subprocess.run([*_as_postgres(), str(PG_BIN / "initdb"), "-D", str(self.data), "-U", USER, "-A",
                        "scram-sha-256", "--pwfile", str(pwfile), "--no-sync", "-E", "UTF8", "--locale", "C"],
                       check=True, capture_output=True, timeout=120)
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            # small, quick, local: no fsync (a test database), stats for the load figure
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 16MB\n"
                       "max_connections = 60\nshared_preload_libraries = 'pg_stat_statements'\n")
        self.password_file.write_text(self.password + "\n")
        self.start()
        self.psql(f"CREATE DATABASE {DATABASE}", database="postgres")
        return self

    def start(self, timeout: float = 30.0) -> Postgres:
        subprocess.run([*_as_postgres(), str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                        "-t", str(int(timeout)), "start"], check=True, capture_output=True, timeout=timeout + 5)
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*_as_postgres(), str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                       capture_output=True, timeout=60)

    def kill(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """Run SQL as the superuser `monitor` over TCP; returns psql's unaligned output."""
        env = {**os.environ, "PGPASSWORD": self.password}
        done = subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database, "-At",
                               "-v", "ON_ERROR_STOP=1", "-c", sql], env=env, capture_output=True, text=True,
                              timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError("postgres not ready")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL 15 for the tests of one module (import this fixture into the test module)."""
    pg = Postgres().init()
    try:
        yield pg
    finally:
        pg.kill()
