"""The metrics endpoint's TLS and basic auth, in the Prometheus exporter-toolkit's web config.

The file ``metrics.web_config`` names is the YAML that every Prometheus exporter
reads with ``--web.config.file``, so one file and one tool (``htpasswd -nBC 10``)
serve a fleet's exporters alike::

    tls_server_config:
      cert_file: dockd.crt        # relative paths: beside this file
      key_file: dockd.key
      min_version: TLS12          # or TLS13; nothing older
    basic_auth_users:
      prometheus: $2y$10$...      # bcrypt

What dockd does not implement (client certificates, cipher lists, HTTP headers)
is refused by name, never ignored: a file that asks for more protection than it
gets must not load.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

KEY = "metrics.web_config"
TLS_KEYS = {"cert_file", "key_file", "min_version"}
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
BCRYPT = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
# checked when a user is unknown, so a wrong name costs what a wrong password costs
_DUMMY = b"$2b$10$" + b"." * 53


def _bad(problem: str) -> ConfigError:
    return ConfigError(KEY, problem)


@dataclass(frozen=True)
class WebConfig:
    path: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    users: dict[str, bytes] = field(default_factory=dict)

    @property
    def has_tls(self) -> bool:
        return self.cert_file is not None

    @property
    def has_auth(self) -> bool:
        return bool(self.users)

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None without TLS. Reads the key: ``dockd run`` only."""
        if self.cert_file is None or self.key_file is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise _bad(f"tls_server_config: cannot load {self.cert_file} with {self.key_file}: "
                       f"{getattr(exc, 'strerror', None) or exc}") from None
        return ctx


def load(path: Path) -> WebConfig:
    """Parse and check the file; ``ConfigError`` naming ``metrics.web_config`` and the inner key.

    Reads the file only, not the certificate or key it names (``tls_context`` does, at start),
    so ``dockd status`` run by an operator who may not read the key still loads the config.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _bad(f"cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _bad(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise _bad(f"{path}: expected a mapping")
    for k in data:
        if k not in ("tls_server_config", "basic_auth_users"):
            raise _bad(f"{k}: not supported by dockd")
    out: dict[str, Any] = {"path": path}
    tls = data.get("tls_server_config")
    if tls is not None:
        if not isinstance(tls, dict):
            raise _bad("tls_server_config: expected a mapping")
        for k in tls:
            if k not in TLS_KEYS:
                raise _bad(f"tls_server_config.{k}: not supported by dockd")
        for k in ("cert_file", "key_file"):
            v = tls.get(k)
            if not isinstance(v, str) or not v:
                raise _bad(f"tls_server_config.{k}: required (a file path)")
            out[k] = path.parent / v          # relative to the web config, as the toolkit does
        version = tls.get("min_version", "TLS12")
        if version not in TLS_VERSIONS:
            raise _bad(f"tls_server_config.min_version: {version!r}: one of {', '.join(TLS_VERSIONS)}")
        out["min_version"] = TLS_VERSIONS[version]
    users = data.get("basic_auth_users")
    if users is not None:
        if not isinstance(users, dict):
            raise _bad("basic_auth_users: expected a mapping of user name to bcrypt hash")
        checked: dict[str, bytes] = {}
        for user, hashed in users.items():
            if not isinstance(user, str) or not user or ":" in user:
                raise _bad(f"basic_auth_users: {user!r}: a user name, without ':'")
            if not isinstance(hashed, str) or not BCRYPT.match(hashed):
                raise _bad(f"basic_auth_users.{user}: not a bcrypt hash ($2y$...)")
            checked[user] = hashed.encode()
        out["users"] = checked
    return WebConfig(**out)


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt is slow on purpose, so a flood of wrong passwords could eat the dock's CPU:
    one check runs at a time, and a right password is remembered (as a SHA-256 of it,
    for that user) so Prometheus's scrape every few seconds costs one hash, not one bcrypt.
    """

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._one = threading.Lock()
        self._good: dict[str, bytes] = {}

    def check(self, header: str | None) -> bool:
        import bcrypt

        scheme, _, cred = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(cred.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not sep:
            return False
        seen = hashlib.sha256(password.encode()).digest()
        with self._one:
            known = self._good.get(user)
            if known is not None and hmac.compare_digest(known, seen):
                return True
            hashed = self.users.get(user)
            try:
                ok = bcrypt.checkpw(password.encode(), hashed or _DUMMY) and hashed is not None
            except ValueError:
                ok = False
            if ok:
                self._good[user] = seen
            return ok
