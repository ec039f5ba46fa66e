"""The channel a store's answers come over: TLS, or plain http only where it is safe.

A store's proof (a HEAD's size and ETag, a read-back) is the server's word.
Over plain http anything on the path can give that word in the server's
name, and a camera would be wiped on it. So a store reached over ``http://``
is refused unless its host is loopback (127.0.0.0/8, ::1, ``localhost``) or
the configuration sets ``store.trust_plain_http``; and whatever weakens the
channel (plain http, TLS not verified) is logged as a warning each time a
store is opened, that is at every start and reload. This module is the one
place that decides both.
"""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path
from urllib.parse import urlparse

import structlog

from ..errors import ConfigError

log = structlog.get_logger("dockd.store")

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
TRUST_KEY = "store.trust_plain_http"


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_plain_http(url: str, key: str, trust_plain_http: bool) -> bool:
    """Whether ``url`` is plain http; refuse it off loopback unless trusted.

    Raises ``ConfigError`` naming ``key`` for a URL that is not http(s) with a
    host, and for plain http to a host off loopback without ``trust_plain_http``.
    Does no I/O and logs nothing, so configuration loading can call it.
    """
    try:
        u = urlparse(url)
        host = u.hostname
    except ValueError:
        raise ConfigError(key, f"not a URL: {url!r}") from None
    if u.scheme not in ("http", "https") or not host:
        raise ConfigError(key, f"must be an https:// URL with a host (http:// on loopback), not {url!r}")
    if u.scheme == "https":
        return False
    if not is_loopback(host) and not trust_plain_http:
        raise ConfigError(
            key, f"plain http to {host} is refused: anything on the path could answer for the store "
            f"and a camera be wiped on its word; use https://, or set {TRUST_KEY} = true to accept that risk",
        )
    return True


def open_channel(endpoint: str | None, *, store: str, key: str, trust_plain_http: bool = False,
                 verify_tls: bool = True, ca_bundle: Path | str | None = None) -> bool | str:
    """Check the channel to ``endpoint`` and log what weakens it; the ``verify``
    argument for requests / botocore (False, True, or the CA bundle's path).

    ``endpoint`` None is the service's own https endpoint (AWS S3). ``store``
    names the store in the log lines. Call once per store opened: logs
    ``store.plain_http`` for plain http (loopback or trusted) and
    ``store.tls_unverified`` for https with ``verify_tls`` off.
    """
    if endpoint is not None and is_plain_http(endpoint, key, trust_plain_http):
        loopback = is_loopback(urlparse(endpoint).hostname)
        log.warning("store.plain_http", store=store, endpoint=endpoint, loopback=loopback)
        return True
    if not verify_tls:
        log.warning("store.tls_unverified", store=store)
        return False
    return str(ca_bundle) if ca_bundle else True


def read_secret(path: Path, key: str) -> str:
    """The text of a file holding a store secret (``key`` names its setting); one readable
    by group or others is refused, as is one that cannot be read or is not UTF-8."""
    try:
        st = path.stat()
        if st.st_mode & 0o077:
            raise ConfigError(key, f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; it holds secrets, "
                                   "make it 0600 (or 0400)")
        return path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path}: not UTF-8") from None
