"""Typed, validated TOML configuration with an embedded default.

Lookup order: ``--config FILE``, then ``$DOCKD_CONFIG``, then
``/etc/dockd/dockd.toml``, then the embedded default (per-user directories,
a ``file://`` store), which works for an unprivileged user with no setup.

A bad file yields one ``ConfigError`` naming the dotted key; unknown keys are
errors, never silently ignored.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlsplit
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

SYSTEM_CONFIG = Path("/etc/dockd/dockd.toml")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(value: Any) -> int:
    """``1048576``, ``"1MiB"`` (binary) or ``"1MB"`` (decimal) → bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            num, unit, binary = m.groups()
            base = 1024 if binary or unit == "" else 1000
            return int(float(num) * base ** _UNITS[unit.lower()])
    raise ValueError(f"expected a size such as 64MiB, got {value!r}")


Size = Annotated[int, BeforeValidator(parse_size)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationConfig(_Section):
    id: str = Field(default="dock-01", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _absolute_dir(v: Any) -> Any:
    """A directory dockd writes to: absolute (a relative one, or "", which is ".", would
    follow whatever directory dockd was started in), free of control characters."""
    if isinstance(v, (str, Path)):
        if not str(v) or not Path(v).is_absolute():
            raise ValueError(f"must be an absolute path, got {str(v)!r}")
        if _has_control(str(v)):
            raise ValueError(f"must not contain control characters, got {str(v)!r}")
    return v


def _has_control(text: str) -> bool:
    return any(not ch.isprintable() for ch in text)


AbsDir = Annotated[Path, BeforeValidator(_absolute_dir)]
AbsFile = AbsDir            # a file dockd writes: the same rule


class PathsConfig(_Section):
    state_dir: AbsDir = Path("/var/lib/dockd")
    spool_dir: AbsDir = Path("/var/lib/dockd/spool")
    runtime_dir: AbsDir = Path("/run/dockd")


class EncryptionConfig(_Section):
    recipients: list[str] = Field(default_factory=list)

    @field_validator("recipients")
    @classmethod
    def _parse(cls, v: list[str]) -> list[str]:
        from .age.keys import parse_recipient
        from .errors import DockdError

        for i, r in enumerate(v):
            try:
                parse_recipient(r)
            except DockdError as exc:
                raise ValueError(f"recipient {i + 1}: {exc}") from None
        return v


class TimetableEntry(_Section):
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")   # "HH:MM", local time
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    rate_limit: Size                                           # bytes/s, 0 = unlimited


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")
_PREFIX_RULE = ("segments of letters, digits, '.', '_', '-' separated by '/', none starting with '.', "
                "not starting with '/'")
# where a file:// store must never be: pseudo-filesystems, where "writing" never lands
_NOT_A_STORE = (Path("/dev"), Path("/proc"), Path("/sys"))


def _is_key_prefix(v: str) -> bool:
    """An object-key prefix: empty, or relative segments none of which can climb
    (``..``), hide (``.x``) or carry control characters."""
    return v == "" or (len(v) <= 200 and all(_SEGMENT_RE.match(seg) for seg in v.split("/")))


def _check_file_store(host: str, path: str) -> None:
    if host not in ("", "localhost"):
        raise ValueError(f"file:// URL names host {host!r}; use file:///absolute/path")
    if not path or not path.startswith("/") or path == "/":
        raise ValueError("file:// URL needs an absolute directory, e.g. file:///srv/evidence")
    p = Path(path)
    if any(p == d or d in p.parents for d in _NOT_A_STORE):
        raise ValueError(f"{path} is not a place to keep evidence")
    try:
        mode = p.stat().st_mode
    except OSError:
        return              # absent, or not ours to look at (an operator reading the config)
    if not stat.S_ISDIR(mode):
        raise ValueError(f"{path} exists and is not a directory")


class StoreConfig(_Section):
    url: str = "file:///var/lib/dockd/store"
    prefix: str = "evidence"
    # s3://
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    ca_bundle: Path | None = None
    verify_tls: bool = True
    # Plain http to a store off loopback: the store's proof (which wipes cameras) is then
    # only as good as every hop between dock and store. Refused unless this says so.
    trust_plain_http: bool = False
    credentials_file: Path | None = None
    checksum: Literal["auto", "sha256", "off"] = "auto"
    # Up to here an object is one PUT: one request, streamed from the spool, where parts
    # cost the server a segment each and a manifest (rclone's upload cutoff, for the same
    # reason). A PUT that fails is sent again whole: at most this much.
    multipart_threshold: Size = 200 * 1024 * 1024
    part_size: Size = 16 * 1024 * 1024
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = None
    object_lock_days: int | None = Field(default=None, ge=1)
    legal_hold_flagged: bool = True
    retention_class: str = "31d"
    tag_retention: bool = True
    # https:// (tus)
    token_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    chunk_size: Size = 8 * 1024 * 1024
    # all
    timeout: float = Field(default=60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not re.match(r"^(file|s3|https?)://", v):
            raise ValueError("must start with file://, s3:// or https://")
        if _has_control(v):
            raise ValueError("must not contain control characters")
        u = urlsplit(v)
        if u.scheme == "file":
            _check_file_store(u.netloc, unquote(u.path))
        elif u.scheme == "s3":
            if not _BUCKET_RE.match(u.netloc) or ".." in u.netloc or _IPV4_RE.match(u.netloc):
                raise ValueError(f"{u.netloc!r} is not a valid S3 bucket name (3-63 characters: "
                                 "lower-case letters, digits, '.', '-'; starting and ending alphanumeric)")
            if not _is_key_prefix(u.path.strip("/")) or "//" in u.path:
                raise ValueError(f"key prefix {u.path!r} after the bucket: {_PREFIX_RULE}")
        elif not u.hostname:
            raise ValueError("names no host")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _is_key_prefix(v):
            raise ValueError(f"{v!r}: {_PREFIX_RULE}")
        return v

    @model_validator(mode="after")
    def _channel(self) -> "StoreConfig":
        """Refuse plain http off loopback (see store/channel.py) at load, before any dock."""
        from .store.channel import is_plain_http

        if self.url.startswith("s3://") and self.endpoint_url is not None:
            is_plain_http(self.endpoint_url, "store.endpoint_url", self.trust_plain_http)
        elif self.url.startswith(("http://", "https://")):
            is_plain_http(self.url, "store.url", self.trust_plain_http)
        if self.ca_bundle is not None and not self.verify_tls:
            raise ConfigError("store.verify_tls", "false contradicts store.ca_bundle (the CAs to verify "
                              "with); keep one of them")
        return self


class DevicesConfig(_Section):
    source: Literal["inbox", "udev", "kernel"] = "inbox"
    udev_tag: str = Field(default="dockd", pattern=r"^[A-Za-z0-9_-]{1,64}$")   # TAG the rules set
    inbox_dir: AbsDir = Path("/var/lib/dockd/inbox")
    profiles_dir: AbsDir | None = None
    mount_dir: AbsDir = Path("/run/dockd/mnt")
    fuse_helpers: dict[str, str] = Field(default_factory=lambda: {"exfat": "mount.exfat-fuse"})
    max_readers: int = Field(default=8, ge=1)


class WipeConfig(_Section):
    after: Literal["verified", "spooled"] = "verified"


class UploadConfig(_Section):
    concurrency: int = Field(default=4, ge=1, le=64)
    attempts: int = Field(default=5, ge=1)
    backoff_initial: float = Field(default=0.5, ge=0)
    backoff_max: float = Field(default=60.0, ge=0)
    max_integrity_retries: int = Field(default=5, ge=1)     # store copy differs this often → attention
    rate_limit: Size = 0                                     # bytes/s, 0 = unlimited
    timetable: list[TimetableEntry] = Field(default_factory=list)


class SpoolConfig(_Section):
    min_free: Size = 512 * 1024 * 1024     # below this, spooling pauses
    max_size: Size = 0                     # 0 = no cap beyond min_free


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host is every interface) → (host, port)."""
    m = re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})$", listen)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9708, [::1]:9708 or 0.0.0.0:9708")
    return m.group(1).strip("[]"), int(m.group(2))


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False            # a name, or every interface (""): reachable from elsewhere


class MetricsConfig(_Section):
    textfile: AbsFile | None = None
    listen: str | None = None
    # TLS and basic auth for ``listen``, in the Prometheus exporter-toolkit's web config
    # format (see webconfig.py); required off loopback
    web_config: Path | None = None
    interval: float = Field(default=15.0, gt=0)      # seconds between textfile rewrites

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        try:
            if v is not None:
                split_listen(v)
        except ValueError as exc:
            raise ConfigError("metrics.listen", str(exc)) from None
        return v

    @model_validator(mode="after")
    def _exposure(self) -> "MetricsConfig":
        """Off loopback, anyone on the network could read (and flood) the endpoint:
        refused at load without TLS and basic auth, before anything listens."""
        from . import webconfig

        if self.web_config is not None and self.listen is None:
            raise ConfigError("metrics.web_config", "applies to metrics.listen only, which is not set")
        web = webconfig.load(self.web_config) if self.web_config is not None else None
        if self.listen is not None and not is_loopback(split_listen(self.listen)[0]):
            if web is None or not (web.has_tls and web.has_auth):
                raise ConfigError("metrics.listen", f"{self.listen} is off loopback: set metrics.web_config "
                                  "to a file with tls_server_config and basic_auth_users")
        return self


class HooksConfig(_Section):
    command: list[str] | None = None
    timeout: float = Field(default=30.0, gt=0)       # seconds before a hook is killed


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Section):
    station: StationConfig = StationConfig()
    paths: PathsConfig = PathsConfig()
    encryption: EncryptionConfig = EncryptionConfig()
    store: StoreConfig = StoreConfig()
    devices: DevicesConfig = DevicesConfig()
    wipe: WipeConfig = WipeConfig()
    upload: UploadConfig = UploadConfig()
    spool: SpoolConfig = SpoolConfig()
    metrics: MetricsConfig = MetricsConfig()
    hooks: HooksConfig = HooksConfig()
    log: LogConfig = LogConfig()

    # where this config came from ("embedded default" or a path), for messages
    source: str = Field(default="embedded default", exclude=True)

    @property
    def ledger_path(self) -> Path:
        return self.paths.state_dir / "ledger.sqlite3"


def _first_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "value_error":
        msg = str(err["ctx"]["error"])       # our own validator's words, without pydantic's preamble
    elif err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return ConfigError(key, msg[0].lower() + msg[1:] if msg else "invalid")


def parse(text: str, source: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{source}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{source}: not UTF-8: {exc}") from None
    if "source" in data:
        raise ConfigError("source", "unknown key")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None
    except ValueError as exc:  # a validator's own error type (e.g. KeyFormatError)
        raise ConfigError("", str(exc)) from None
    return cfg.model_copy(update={"source": source})


def user_default() -> Config:
    """The embedded default: everything under per-user XDG directories."""
    home = Path.home()
    state = Path(os.environ.get("XDG_STATE_HOME") or home / ".local/state") / "dockd"
    data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local/share") / "dockd"
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or state / "run") / "dockd"
    return Config(
        paths=PathsConfig(state_dir=state, spool_dir=state / "spool", runtime_dir=runtime),
        store=StoreConfig(url=f"file://{data / 'store'}"),
        devices=DevicesConfig(inbox_dir=state / "inbox", mount_dir=runtime / "mnt"),
        source="embedded default",
    )


def load(path: Path | None = None) -> Config:
    """Load the configuration following the lookup order above."""
    if path is None and os.environ.get("DOCKD_CONFIG"):
        path = Path(os.environ["DOCKD_CONFIG"])
    if path is None and SYSTEM_CONFIG.exists():
        path = SYSTEM_CONFIG
    if path is None:
        return user_default()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("", f"{path}: not UTF-8") from None
    return parse(text, str(path))


# What a reload (SIGHUP) can change. Everything else is built once, at start: the paths,
# the store and its upload pool, the device source, the control socket and metrics
# endpoints; a reload that changes them is refused, all of it, and says which keys.
RELOADABLE = ("encryption", "devices.profiles_dir", "wipe", "spool", "hooks", "log", "metrics.interval")


def needs_restart(old: Config, new: Config) -> list[str]:
    """The dotted keys that differ between ``old`` and ``new`` and a reload cannot apply."""
    out: list[str] = []

    def walk(a: dict[str, Any], b: dict[str, Any], prefix: str) -> None:
        for k in sorted(set(a) | set(b)):
            key = prefix + k
            if any(key == r or key.startswith(r + ".") for r in RELOADABLE):
                continue
            x, y = a.get(k), b.get(k)
            if isinstance(x, dict) and isinstance(y, dict):
                walk(x, y, key + ".")
            elif x != y:
                out.append(key)

    walk(old.model_dump(), new.model_dump(), "")
    return out
