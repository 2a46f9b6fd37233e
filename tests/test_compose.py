"""docker-compose.yml is valid Compose and names only services the test suite runs for real."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.settings import PROJECT_ROOT, Settings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"

# Each service, and the test that runs the same thing for real (no docker needed).
SERVICE_TESTS = {
    "redis": "tests.worker.test_runner:test_redis_and_postgres_through_a_real_worker",
    "postgres": "tests.worker.test_migrations:test_postgres_upgrade_downgrade_matches_models",
    "migrate": "tests.worker.test_migrations:test_postgres_upgrade_downgrade_matches_models",
    "worker": "tests.worker.test_runner:test_redis_and_postgres_through_a_real_worker",
    "beat": "tests.worker.test_batch:test_callmood_beat_execs_celery_beat",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    import jsonschema

    # The compose-spec schema vendored by check-jsonschema: no network needed.
    schema_text = (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
                   ).read_text()
    schema = json.loads(schema_text)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert errors == [], [f"{list(e.path)}: {e.message}" for e in errors]
    broken = dict(compose, services={"worker": {"image": "x", "depends_on": 5}})
    assert list(validator.iter_errors(broken)), "the schema check must be able to fail"


def test_every_service_is_exercised_by_a_real_test(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == set(SERVICE_TESTS)
    for target in SERVICE_TESTS.values():
        module_name, function = target.split(":")
        assert callable(getattr(importlib.import_module(module_name), function)), target


def test_services_are_wired_like_the_tests_run_them(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["depends_on"]["migrate"]["condition"] == \
        "service_completed_successfully"
    for name in ("redis", "postgres"):
        assert "healthcheck" in services[name], name
        assert services["worker"]["depends_on"][name]["condition"] == "service_healthy"
        assert services[name]["volumes"], f"{name} keeps its data in a volume"
    assert services["beat"]["command"] == ["beat"]
    assert services["beat"]["deploy"]["replicas"] == 1  # one beat, or the scan is sent twice
    for name in ("migrate", "worker", "beat"):
        env = services[name]["environment"]
        # The password comes from the environment of `docker compose`, never from this file.
        password = "pw-from-env"
        resolved = {k: re.sub(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", password, str(v))
                    for k, v in env.items()}
        # Other ${VAR:-default} fall back to their default when unset.
        resolved = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in resolved.items()}
        assert "${POSTGRES_PASSWORD:?" in env["CALLMOOD_DATABASE_URL"]
        settings = Settings.from_env(resolved)  # the worker would start with these
        assert settings.database_url.startswith("postgresql+psycopg://callmood:")
        assert settings.database_url.endswith("@postgres:5432/callmood")
        assert settings.broker_url == "redis://redis:6379/0"
        assert settings.input_roots == (Path("/recordings"),)
        assert settings.inbox_dirs == (Path("/recordings/inbox"),)
        assert (settings.nightly_at, settings.timezone) == ((2, 0), "UTC")
    # the recordings' folder must be named: a default mounted an empty one (a review)
    assert services["worker"]["volumes"][0].startswith("${RECORDINGS_DIR:?")
    # beat keeps its schedule across a recreate, or a night's scan is skipped
    assert any(v.endswith(":/var/lib/callmood") for v in services["beat"]["volumes"])
    pg_env = services["postgres"]["environment"]
    assert pg_env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_dockerfile_runs_the_cli_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["callmood"]' in text
    assert "pip install '.[postgres]'" in text
    assert re.search(r"^USER (?!root)\S+", text, re.MULTILINE)
    for path in ("worker", "migrations", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", text, re.MULTILINE), path


def _local_version(argv: list[str], pattern: str) -> tuple[int, ...] | None:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return None
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    match = re.search(pattern, out)
    return tuple(int(x) for x in match.groups()) if match else None


def test_images_match_the_server_versions_the_tests_run(compose: dict[str, Any]) -> None:
    redis_image = compose["services"]["redis"]["image"]
    postgres_image = compose["services"]["postgres"]["image"]
    redis_local = _local_version(["redis-server", "--version"], r"v=(\d+)\.(\d+)")
    from tests.conftest import _pg_bin_dir

    pg_dir = _pg_bin_dir()      # the newest major: the one the PostgreSQL fixture starts
    pg_local = (_local_version([str(pg_dir / "postgres"), "--version"], r"\) (\d+)\.")
                if pg_dir is not None and (pg_dir / "postgres").is_file() else None)
    if redis_local is None or pg_local is None:
        from tests.conftest import unavailable

        unavailable("redis-server or PostgreSQL binaries missing; cannot compare versions")
    assert redis_image.startswith(f"redis:{redis_local[0]}.{redis_local[1]}")
    assert postgres_image.startswith(f"postgres:{pg_local[0]}")
