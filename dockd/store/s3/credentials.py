"""S3 credentials: a file, systemd credentials, or boto3's own chain (see ``s3/__init__``)."""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ...errors import ConfigError
from ..channel import read_secret

CREDENTIALS_FILE_NAME = "s3-credentials"


# -- credentials --------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(access_key_id={self.access_key_id[:4]}…)"


def _parse_credentials_text(text: str, where: str) -> Credentials:
    values: dict[str, str] = {}
    if any(line.strip().startswith("[") for line in text.splitlines()):
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read_string(text)
        except configparser.Error as exc:
            raise ConfigError("store.credentials_file", f"{where}: not an ini file ({exc.__class__.__name__})") from None
        sections = cp.sections()
        name = "default" if "default" in sections else (sections[0] if len(sections) == 1 else None)
        if name is None:
            raise ConfigError("store.credentials_file", f"{where}: no [default] section")
        values = dict(cp[name])
    else:
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            k, sep, v = line.partition("=")
            if not sep:
                raise ConfigError("store.credentials_file", f"{where}: expected key = value lines")
            values[k.strip().lower()] = v.strip().strip('"')
    key, secret = values.get("aws_access_key_id"), values.get("aws_secret_access_key")
    if not key or not secret:
        raise ConfigError(
            "store.credentials_file", f"{where}: needs aws_access_key_id and aws_secret_access_key"
        )
    return Credentials(key, secret, values.get("aws_session_token") or None)


def load_credentials_file(path: Path) -> Credentials:
    """Read a credentials file; refuse one readable by group or others."""
    return _parse_credentials_text(read_secret(path, "store.credentials_file"), str(path))


def resolve_credentials(
    credentials_file: Path | None, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """The credentials to use, or None for boto3's own chain. See the module doc."""
    env = os.environ if environ is None else environ
    if credentials_file is not None:
        return load_credentials_file(Path(credentials_file))
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        d = Path(cred_dir)
        key_f, secret_f = d / "aws_access_key_id", d / "aws_secret_access_key"
        if key_f.is_file() and secret_f.is_file():
            token_f = d / "aws_session_token"
            token = token_f.read_text().strip() if token_f.is_file() else None
            return Credentials(key_f.read_text().strip(), secret_f.read_text().strip(), token or None)
        if (d / CREDENTIALS_FILE_NAME).is_file():
            # systemd makes the directory private to the service; no mode check
            f = d / CREDENTIALS_FILE_NAME
            return _parse_credentials_text(f.read_text("utf-8"), str(f))
    return None
