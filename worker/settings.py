"""Settings from ``CALLMOOD_*`` environment variables, validated once at start.

Every value has an embedded default that needs no server: the SQLite database and the
Celery broker (Kombu's SQLAlchemy transport on SQLite) live under ``CALLMOOD_DATA_DIR``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker.constants import MAX_CHANNELS, ROLE_AGENT, ROLE_CUSTOMER, ROLE_UNKNOWN, ROLES
from worker.crosstalk import CrosstalkConfig
from worker.errors import ConfigError
from worker.segmentation import SegmentationConfig
from worker.vad import VadConfig

_Config = TypeVar("_Config", VadConfig, SegmentationConfig, CrosstalkConfig)

ENV_PREFIX = "CALLMOOD_"
VAD_PREFIX = "CALLMOOD_VAD_"
SEGMENTATION_PREFIX = "CALLMOOD_SEGMENTATION_"
CROSSTALK_PREFIX = "CALLMOOD_CROSSTALK_"
"""Prefixes of the VadConfig / SegmentationConfig / CrosstalkConfig fields read field by
field."""
PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
DEFAULT_MODEL_PATH = PACKAGE_DIR / "models" / "emotion-v1.onnx"
# The corpora sit beside the project checkout (../shared/corpora); never copied into it.
DEFAULT_CORPORA_DIR = PROJECT_ROOT.parent / "shared" / "corpora"


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one callmood process."""

    data_dir: Path
    database_url: str
    broker_url: str
    input_roots: tuple[Path, ...]
    corpora_dir: Path
    model_path: Path
    channel_roles: tuple[str, ...] = (ROLE_AGENT, ROLE_CUSTOMER)
    onnx_threads: int = 1
    max_duration_s: float = 4 * 3600.0
    max_file_bytes: int = 2 * 1024**3
    log_level: str = "INFO"
    inbox_dirs: tuple[Path, ...] = ()
    """Folders the nightly scan (``worker.batch``) looks for new recordings in."""
    inbox_min_age_s: float = 60.0
    """A scan leaves a file modified less than this long ago for the next scan: a recording
    copied into the inbox under its final name (cp, an SMB share) is still being written,
    and the scan would send its first part, under that path, for good. A copy rewrites its
    modification time as it writes; a minute covers a copy stalled that long. 0: no wait."""
    nightly_at: tuple[int, int] = (2, 0)
    """(hour, minute) of the nightly scan, in ``timezone``."""
    timezone: str = "UTC"
    """IANA zone of ``nightly_at`` and of "today" in ``callmood status``."""
    vad: VadConfig = field(default_factory=VadConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    crosstalk: CrosstalkConfig = field(default_factory=CrosstalkConfig)
    """The gate that drops one party's utterances leaked from the other's channel."""
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate settings; raise ConfigError naming the bad variable."""
        env = dict(os.environ if environ is None else environ)
        unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and not _is_setting(k))
        if unknown:
            # a misspelt CALLMOOD_BROKER_URL would otherwise run on the embedded default
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid are "
                              f"{', '.join(ENV_PREFIX + n for n in SETTING_NAMES)} and "
                              f"{', '.join(p + '*' for p in SETTING_PREFIXES)}")

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value if value not in (None, "") else None

        data_dir = Path(get("DATA_DIR") or ".callmood").expanduser().resolve()
        database_url = get("DATABASE_URL") or f"sqlite:///{data_dir / 'callmood.sqlite'}"
        broker_url = get("BROKER_URL") or f"sqla+sqlite:///{data_dir / 'broker.sqlite'}"
        _check_url("CALLMOOD_DATABASE_URL", database_url, ("sqlite", "postgresql"))
        _check_url("CALLMOOD_BROKER_URL", broker_url, ("redis", "rediss", "sqla+sqlite",
                                                          "sqla+postgresql", "memory"))
        _check_broker_query(broker_url)

        roots_raw = get("INPUT_ROOTS")
        if roots_raw is None:
            roots = tuple(dict.fromkeys([Path.cwd().resolve(), data_dir]))
        else:
            roots = tuple(Path(p).expanduser().resolve()
                          for p in roots_raw.split(os.pathsep) if p.strip())
            if not roots:
                raise ConfigError("CALLMOOD_INPUT_ROOTS is set but names no directory; "
                                  f"give directories separated by {os.pathsep!r}")

        model_path = Path(get("MODEL_PATH") or DEFAULT_MODEL_PATH).expanduser().resolve()
        corpora_dir = Path(get("CORPORA_DIR") or DEFAULT_CORPORA_DIR).expanduser().resolve()

        roles_raw = get("CHANNEL_ROLES") or "agent,customer"
        channel_roles = tuple(r.strip() for r in roles_raw.split(","))
        bad = [r for r in channel_roles if r not in ROLES]
        if bad or not channel_roles:
            raise ConfigError(f"CALLMOOD_CHANNEL_ROLES={roles_raw!r}: each role must be one of "
                              f"{', '.join(ROLES)} (comma-separated, channel 0 first)")
        # the analytics tell a call's parties apart by role: two channels of one role (unknown
        # included, which is also the role of a channel the list leaves out) would be merged
        # into one speaker, with no overtalk between them and one stress curve for both
        every_channel = [*channel_roles,
                         *[ROLE_UNKNOWN] * max(0, MAX_CHANNELS - len(channel_roles))]
        if len(channel_roles) > MAX_CHANNELS or len(set(every_channel)) < len(every_channel):
            raise ConfigError(f"CALLMOOD_CHANNEL_ROLES={roles_raw!r}: one role per channel of a "
                              f"stereo recording, at most {MAX_CHANNELS}, each role once (e.g. "
                              f"{ROLE_CUSTOMER},{ROLE_AGENT} or {ROLE_AGENT},{ROLE_UNKNOWN}; a "
                              f"channel left out is {ROLE_UNKNOWN}): the reports tell parties "
                              "apart by role, so two channels of one role would be one speaker")

        inbox_dirs = tuple(Path(p).expanduser().resolve()
                           for p in (get("INBOX_DIRS") or "").split(os.pathsep) if p.strip())
        if roots_raw is None:
            # The worker may only read under the input roots: the inboxes must be among them.
            roots = tuple(dict.fromkeys([*roots, *inbox_dirs]))
        outside = [str(d) for d in inbox_dirs if not any(d.is_relative_to(r) for r in roots)]
        if outside:
            raise ConfigError(f"CALLMOOD_INBOX_DIRS: {', '.join(outside)} not under any of "
                              f"CALLMOOD_INPUT_ROOTS ({', '.join(str(r) for r in roots)}); "
                              "the worker could not read what the scan enqueues")
        timezone = get("TIMEZONE") or "UTC"
        zone_for(timezone)

        log_level = (get("LOG_LEVEL") or "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"CALLMOOD_LOG_LEVEL={log_level!r}: use DEBUG, INFO, WARNING or ERROR")

        return cls(
            data_dir=data_dir,
            database_url=database_url,
            broker_url=broker_url,
            input_roots=roots,
            corpora_dir=corpora_dir,
            model_path=model_path,
            channel_roles=channel_roles,
            onnx_threads=_positive_int(get("ONNX_THREADS"), "CALLMOOD_ONNX_THREADS", 1),
            max_duration_s=_positive_float(get("MAX_DURATION_S"), "CALLMOOD_MAX_DURATION_S",
                                           cls.max_duration_s),
            max_file_bytes=_positive_int(get("MAX_FILE_BYTES"), "CALLMOOD_MAX_FILE_BYTES",
                                         cls.max_file_bytes),
            log_level=log_level,
            inbox_dirs=inbox_dirs,
            inbox_min_age_s=_non_negative_float(get("INBOX_MIN_AGE_S"),
                                                "CALLMOOD_INBOX_MIN_AGE_S", cls.inbox_min_age_s),
            nightly_at=_clock_time(get("NIGHTLY_AT") or "02:00", "CALLMOOD_NIGHTLY_AT"),
            timezone=timezone,
            vad=_dataclass_from_env(VadConfig, env, VAD_PREFIX),
            segmentation=_dataclass_from_env(SegmentationConfig, env, SEGMENTATION_PREFIX),
            crosstalk=_dataclass_from_env(CrosstalkConfig, env, CROSSTALK_PREFIX),
            extra={k: v for k, v in env.items() if k.startswith(ENV_PREFIX)},
        )

    def role_for_channel(self, channel: int, n_channels: int) -> str:
        """Party role of ``channel``; a mono recording is one unknown party."""
        if n_channels == 1:
            return ROLE_UNKNOWN
        return self.channel_roles[channel] if channel < len(self.channel_roles) else ROLE_UNKNOWN

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_BOOLEANS: dict[str, bool] = {"1": True, "true": True, "yes": True, "on": True,
                              "0": False, "false": False, "no": False, "off": False}


def _dataclass_from_env(cls: type[_Config], env: Mapping[str, str], prefix: str) -> _Config:
    """``cls()`` with fields overridden by ``PREFIX<FIELD>`` variables (e.g. CALLMOOD_VAD_PAD_MS)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    changes: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(prefix) or raw == "":
            continue
        name = key[len(prefix):].lower()
        if name not in known:
            valid = ", ".join(prefix + n.upper() for n in known)
            raise ConfigError(f"{key} is not a setting; valid: {valid}")
        kind = type(getattr(cls(), name))
        if kind is bool:
            # bool("0") is True: read the usual spellings instead, and refuse the rest
            try:
                changes[name] = _BOOLEANS[raw.strip().lower()]
            except KeyError as e:
                raise ConfigError(f"{key}={raw!r}: expected one of {', '.join(_BOOLEANS)}") from e
            continue
        try:
            changes[name] = kind(raw)
        except ValueError as e:
            raise ConfigError(f"{key}={raw!r}: expected {kind.__name__}") from e
    try:
        return cls(**changes)
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"{prefix}*: {e}") from e


def cut_env_assignments(vad: VadConfig, segmentation: SegmentationConfig) -> list[str]:
    """``CALLMOOD_VAD_<FIELD>=value`` and ``CALLMOOD_SEGMENTATION_<FIELD>=value`` for each
    field off its default: the environment :meth:`Settings.from_env` builds these two configs
    from again. A recorded command carries them, so rerunning it rebuilds its cut."""
    return [*_env_assignments(vad, VAD_PREFIX),
            *_env_assignments(segmentation, SEGMENTATION_PREFIX)]


def _env_assignments(config: VadConfig | SegmentationConfig, prefix: str) -> list[str]:
    """The inverse of :func:`_dataclass_from_env`: ``PREFIX<FIELD>=value`` for each field of
    ``config`` that differs from its default (booleans as 0/1, which it reads)."""
    default = type(config)()
    assignments = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value == getattr(default, f.name):
            continue
        text = str(int(value)) if isinstance(value, bool) else str(value)
        assignments.append(f"{prefix}{f.name.upper()}={text}")
    return assignments


def _positive_int(raw: str | None, name: str, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ConfigError(f"{name}={raw!r}: expected a positive integer") from e
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: expected a positive integer")
    return value


def _float_setting(raw: str | None, name: str, default: float, expected: str,
                   valid: Callable[[float], bool]) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise ConfigError(f"{name}={raw!r}: expected {expected}") from e
    if not valid(value):
        raise ConfigError(f"{name}={raw!r}: expected {expected}")
    return value


def _positive_float(raw: str | None, name: str, default: float) -> float:
    return _float_setting(raw, name, default, "a positive number", lambda v: v > 0)


def _non_negative_float(raw: str | None, name: str, default: float) -> float:
    return _float_setting(raw, name, default, "a number of seconds, 0 or more",
                          lambda v: 0.0 <= v < float("inf"))


_CLOCK_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


def _clock_time(raw: str, name: str) -> tuple[int, int]:
    match = _CLOCK_RE.match(raw.strip())
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ConfigError(f"{name}={raw!r}: expected HH:MM on a 24-hour clock, 00:00-23:59")
    return int(match[1]), int(match[2])


SETTING_NAMES: tuple[str, ...] = (
    "DATA_DIR", "DATABASE_URL", "BROKER_URL", "INPUT_ROOTS", "MODEL_PATH", "CORPORA_DIR",
    "CHANNEL_ROLES", "INBOX_DIRS", "INBOX_MIN_AGE_S", "TIMEZONE", "LOG_LEVEL", "ONNX_THREADS",
    "MAX_DURATION_S", "MAX_FILE_BYTES", "NIGHTLY_AT")
"""The CALLMOOD_ variables :meth:`Settings.from_env` reads (without the prefix)."""
SETTING_PREFIXES: tuple[str, ...] = (VAD_PREFIX, SEGMENTATION_PREFIX, CROSSTALK_PREFIX,
                                     "CALLMOOD_TEST_")
"""Families checked field by field (VAD, segmentation, crosstalk) or read by the tests
only."""


def _is_setting(name: str) -> bool:
    return name.removeprefix(ENV_PREFIX) in SETTING_NAMES or name.startswith(SETTING_PREFIXES)


def zone_for(name: str, setting: str = "CALLMOOD_TIMEZONE") -> ZoneInfo:
    """The IANA time zone ``name``; ConfigError naming ``setting`` when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(f"{setting}={name!r}: expected an IANA zone name such as "
                          "UTC or Europe/Berlin") from e


NETWORK_SCHEMES: tuple[str, ...] = ("redis", "rediss", "postgresql", "sqla+postgresql")
"""URL schemes naming a server, whose user, password, host and port must parse."""


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    full = urlsplit(url).scheme
    scheme = full.removesuffix("+psycopg")
    if scheme not in schemes:
        # +psycopg2 (or another driver) passed once and then failed with a traceback:
        # callmood ships psycopg 3 only (a review)
        # the hint names what this setting takes: the broker's PostgreSQL is sqla+postgresql://
        # (the database's hint sent an operator to a form the broker refuses; a review)
        postgres = ("postgresql:// or postgresql+psycopg://" if "postgresql" in schemes
                    else "sqla+postgresql://")
        raise ConfigError(f"{name}={redact_url(url)!r}: scheme must be one of "
                          f"{', '.join(schemes)} (PostgreSQL through psycopg 3: {postgres})")
    if scheme in NETWORK_SCHEMES:
        # kombu reads "url1;url2" as a failover list: each part is checked
        for part in url.split(";"):
            _check_server_url(name, part.strip(), scheme)


def _check_broker_query(url: str) -> None:
    """ConfigError for a broker URL kombu cannot take apart: a query parameter its Connection
    does not take (``?socket_timeout=5``) or one that repeats a field of the URL itself
    (``?password=``). kombu raised TypeError with a traceback when a call was sent, after the
    call had been marked sent (a review). Parsed only: nothing connects; and only a URL with
    a query, the one thing kombu can refuse so (importing it costs every command ~50-200 ms)."""
    if not any(urlsplit(part.strip()).query for part in url.split(";")):
        return
    from kombu.connection import Connection

    try:
        Connection(url)  # type: ignore[no-untyped-call]
    except TypeError as e:
        raise ConfigError(
            f"CALLMOOD_BROKER_URL={redact_url(url)!r}: the broker cannot take a query "
            f"parameter of it ({e}): give a password in the URL itself "
            "(redis://:PASSWORD@host:port/db, percent-encoded), and leave out options kombu "
            "does not read") from e


def _check_server_url(name: str, url: str, scheme: str) -> None:
    """ConfigError for a server URL its driver would misread: a port that does not parse, a
    password holding an unencoded '/' (the rest of it becomes the path), or, for
    PostgreSQL, one holding '@' (SQLAlchemy splits at the first '@' of the password, redis-py
    and kombu at the last, which they read right). They resolved the wrong host, or named part
    of the password in a traceback (a review)."""
    parts = urlsplit(url)
    refused = (f"{name}={redact_url(url)!r}: its password (or user) holds an unencoded "
               "character the driver misreads: percent-encode it (@ as %40, / as %2F, : as %3A)")
    try:
        parts.port  # noqa: B018  (parsing it is the check)
    except ValueError as e:
        if "@" in parts.path:
            raise ConfigError(refused) from e
        raise ConfigError(f"{name}={redact_url(url)!r}: its port does not parse ({e})") from e
    if "@" in parts.path:
        raise ConfigError(refused)
    if scheme.endswith("postgresql") and parts.netloc.count("@") > 1:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            host = make_url(url.removeprefix("sqla+")).host
        except ArgumentError as e:
            raise ConfigError(refused) from e
        if (host or "").lower() != (parts.hostname or "").lower():
            raise ConfigError(refused)


_USERINFO_RE = re.compile(r"(?P<head>[^:/@]+://[^:/@]*):(?P<password>.*)@(?P<tail>[^@]*)")
"""``scheme://user:password@rest``, the password running to the last ``@``: it may hold
``:`` or ``@`` unencoded (redis-py reads an ``@`` there; the settings refuse what a driver
would misread, :func:`_check_server_url`), and hiding too much of a malformed URL is safe
where hiding too little is not."""


_QUERY_PASSWORD_RE = re.compile(r"(?P<key>[?&](?:password|passwd|pwd)=)[^&#]*", re.IGNORECASE)
"""A password given as a query parameter (``redis://host/0?password=...``; libpq and
SQLAlchemy's psycopg dialect read ``?password=`` too)."""


def redact_url(url: str) -> str:
    """``url`` with any password, in its user part or its query, replaced by ``***`` (safe to
    log or print)."""
    match = _USERINFO_RE.fullmatch(url)
    if match is not None:
        url = f"{match['head']}:***@{match['tail']}"
    return _QUERY_PASSWORD_RE.sub(r"\g<key>***", url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
