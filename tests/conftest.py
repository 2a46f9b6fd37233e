"""Session fixtures that start throw-away servers from the Debian packages, and isolated settings.

PostgreSQL (``initdb``/``pg_ctl`` from /usr/lib/postgresql/*/bin, run as the ``postgres`` user
when we are root) and ``redis-server`` listen on free loopback ports in temporary directories
and are stopped at the end of the session. ``CALLMOOD_TEST_POSTGRES_URL`` /
``CALLMOOD_TEST_REDIS_URL`` point the tests at servers already running instead.

Outside CI a missing server binary, corpus or model skips the tests that need it; with ``CI``
set it fails them, so CI can never go green by skipping.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.redis_server import private_redis
from worker.settings import DEFAULT_CORPORA_DIR, DEFAULT_MODEL_PATH, Settings, get_settings


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip outside CI; fail in CI (a missing dependency must not pass as a skip there)."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- PostgreSQL

def _pg_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if
                   Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root but runuser is missing; initdb refuses root")
    return [runuser, "-u", "postgres", "--", *argv]


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL superuser connection on a server only this test session uses."""
    given = os.environ.get("CALLMOOD_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL server binaries not found (apt-get install postgresql, or set "
                    "CALLMOOD_TEST_POSTGRES_URL)")
    if os.geteuid() == 0:
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no 'postgres' system user for initdb")
    # Not under pytest's tmp dir: that one is private to root, and initdb runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="callmood-pg-"))
    data_dir = base / "data"
    if os.geteuid() == 0:
        os.chown(base, pw.pw_uid, pw.pw_gid)
    port = free_port()
    log_file = base / "server.log"
    subprocess.run(_as_postgres_user([str(bin_dir / "initdb"), "-D", str(data_dir), "-U",
                                      "postgres", "--auth=trust", "-E", "UTF8",
                                      "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C"]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    options = (f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60")
    started = subprocess.run(
        _as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-o", options, "-l",
                           str(log_file), "-w", "-t", "60", "start"]),
        check=False, stdout=subprocess.DEVNULL)
    if started.returncode != 0:
        log_text = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed ({started.returncode}):\n{log_text}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m",
                                          "immediate", "-w", "stop"]),
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


def _has_c_utf8() -> bool:
    out = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout
    return any(line.lower() in ("c.utf8", "c.utf-8") for line in out.splitlines())


@pytest.fixture()
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test (dropped afterwards)."""
    from worker.db import dispose_engines

    name = f"callmood_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(postgres_admin_url).set(database=name).render_as_string(
            hide_password=False)
    finally:
        dispose_engines()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --------------------------------------------------------------------------- redis

@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a redis-server only this test session uses (no persistence)."""
    given = os.environ.get("CALLMOOD_TEST_REDIS_URL")
    if given:
        yield given
        return
    with private_redis() as url:
        if url is None:
            unavailable("redis-server not found (apt-get install redis-server, or set "
                        "CALLMOOD_TEST_REDIS_URL)")
        yield url


# --------------------------------------------------------------------------- data, model

@pytest.fixture(scope="session")
def callmood_corpora() -> Path:
    """The shared corpora directory (RAVDESS is what the recordings are built from)."""
    path = Path(os.environ.get("CALLMOOD_CORPORA_DIR") or DEFAULT_CORPORA_DIR)
    if not (path / "ravdess" / "manifest.csv").is_file():
        unavailable(f"corpora not found at {path} (set CALLMOOD_CORPORA_DIR)")
    return path


@pytest.fixture(scope="session")
def emotion_model() -> Path:
    """The shipped emotion model; the end-to-end tests need it."""
    path = Path(os.environ.get("CALLMOOD_MODEL_PATH") or DEFAULT_MODEL_PATH)
    if not path.is_file():
        unavailable(f"emotion model {path} not found (it is trained by training/; the "
                    "end-to-end tests need it)")
    return path


@pytest.fixture(scope="session")
def pipeline_importable() -> None:
    """The analysis pipeline imports (its modules are written in parallel with this one)."""
    try:
        import worker.pipeline  # noqa: F401
    except ImportError as e:
        unavailable(f"worker.pipeline does not import yet: {e}")


# --------------------------------------------------------------------------- settings

@pytest.fixture()
def callmood_settings(tmp_path: Path) -> Settings:
    """Settings isolated in ``tmp_path``: SQLite DB and broker there; inputs under tmp/input."""
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    corpora = Path(os.environ.get("CALLMOOD_CORPORA_DIR") or DEFAULT_CORPORA_DIR)
    env = {
        "CALLMOOD_DATA_DIR": str(tmp_path / "data"),
        "CALLMOOD_INPUT_ROOTS": os.pathsep.join([str(input_dir), str(corpora)]),
        "CALLMOOD_CORPORA_DIR": str(corpora),
        "CALLMOOD_LOG_LEVEL": "WARNING",
    }
    if os.environ.get("CALLMOOD_MODEL_PATH"):
        env["CALLMOOD_MODEL_PATH"] = os.environ["CALLMOOD_MODEL_PATH"]
    return Settings.from_env(env)


@pytest.fixture()
def callmood_env(callmood_settings: Settings,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """``callmood_settings`` also as the process environment (what get_settings() reads)."""
    for key in list(os.environ):
        if key.startswith("CALLMOOD_") and not key.startswith("CALLMOOD_TEST_"):
            monkeypatch.delenv(key)
    for key, value in callmood_settings.extra.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _dispose_engines_after_test() -> Iterator[None]:
    # Engines are cached per URL; a test's temporary SQLite file must not stay open.
    yield
    from worker.db import dispose_engines

    dispose_engines()
