"""The age v1 header: version line, recipient stanzas, MAC line.

This layer only parses and serialises text. It knows nothing about keys: what
a stanza means is the business of the identity that recognises it, and the
MAC is checked by the caller once a file key is known.

The parser is strict on purpose. Every header has exactly one valid encoding
(canonical unpadded base64, LF line ends, 64-column body lines ending in a
short line), so the bytes the MAC covers are the bytes we interpreted, and
``marshal(parse(h)) == h`` for every header we accept.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import AgeHeaderError, AgeUnsupportedError

VERSION_LINE = b"age-encryption.org/v1\n"
# Any "age-encryption.org/<x>" line is an age file of another version: report
# it as such rather than as garbage.
VERSION_PREFIX = b"age-encryption.org/"
STANZA_PREFIX = b"->"
MAC_PREFIX = b"---"
# The ASCII armor (PEM-like) wrapping of an age file, which dockd declines:
# spool files are always binary.
ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"

# Body lines are wrapped at 64 columns; a line shorter than that ends the
# stanza, which is why a body whose length is a multiple of 48 bytes ends in
# an empty line.
COLUMNS_PER_LINE = 64
BYTES_PER_LINE = COLUMNS_PER_LINE // 4 * 3
MAC_SIZE = 32  # HMAC-SHA-256

# Bounds that keep a hostile header from costing unbounded memory or time.
# Real headers are a few hundred bytes per stanza; the largest native stanza
# (mlkem768x25519) has a ~1.5 KiB argument line.
MAX_LINE_SIZE = 64 * 1024
MAX_HEADER_SIZE = 1024 * 1024
MAX_STANZAS = 1024

_LF = b"\n"
# Stanza arguments are one or more VCHARs (0x21-0x7E), separated by one space.
_ARGUMENT = re.compile(rb"[\x21-\x7e]+")
_B64_CHARS = re.compile(rb"[A-Za-z0-9+/]*")


def b64encode(data: bytes) -> str:
    """Canonical unpadded standard base64, as every age encoder must write."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: bytes | str) -> bytes:
    """Decode canonical unpadded base64; anything else is AgeHeaderError.

    Non-canonical encodings (stray low bits, padding, other characters) are
    rejected because the spec requires it: two encodings of one header would
    let a file be altered without touching what it decrypts to.
    """
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if not _B64_CHARS.fullmatch(raw):
        raise AgeHeaderError("header: invalid base64 character")
    try:
        data = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        raise AgeHeaderError("header: invalid base64 length") from None
    if base64.b64encode(data).rstrip(b"=") != raw:
        raise AgeHeaderError("header: non-canonical base64")
    return data


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: a type, its arguments and an opaque body."""

    type: str
    args: tuple[str, ...] = ()
    body: bytes = field(default=b"", repr=False)

    def marshal(self) -> bytes:
        words = (self.type, *self.args)
        if not words or any(not _ARGUMENT.fullmatch(w.encode("ascii", "replace")) for w in words):
            raise ValueError("stanza arguments must be non-empty printable ASCII without spaces")
        lines = [b"-> " + " ".join(words).encode("ascii")]
        encoded = b64encode(self.body).encode("ascii")
        for i in range(0, len(encoded), COLUMNS_PER_LINE):
            lines.append(encoded[i:i + COLUMNS_PER_LINE])
        if len(encoded) % COLUMNS_PER_LINE == 0:
            lines.append(b"")  # the mandatory short final line
        return _LF.join(lines) + _LF


@dataclass(frozen=True)
class Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes = field(default=b"", repr=False)

    def marshal_without_mac(self) -> bytes:
        """The bytes the header MAC covers: through "---", not the space after it."""
        return VERSION_LINE + b"".join(s.marshal() for s in self.stanzas) + MAC_PREFIX

    def marshal(self) -> bytes:
        return self.marshal_without_mac() + b" " + b64encode(self.mac).encode("ascii") + _LF


class LineSource(Protocol):
    def readline_bounded(self, limit: int) -> bytes: ...


def _check_stanza_line(line: bytes) -> tuple[str, tuple[str, ...]]:
    words = line[:-1].split(b" ")
    if words[0] != STANZA_PREFIX or len(words) < 2:
        raise AgeHeaderError("header: malformed stanza line")
    for w in words[1:]:
        if not _ARGUMENT.fullmatch(w):
            raise AgeHeaderError("header: malformed stanza argument")
    args = tuple(w.decode("ascii") for w in words[1:])
    return args[0], args[1:]


def _check_mac_line(line: bytes) -> bytes:
    words = line[:-1].split(b" ")
    if words[0] != MAC_PREFIX or len(words) != 2:
        raise AgeHeaderError("header: malformed MAC line")
    mac = b64decode(words[1])
    if len(mac) != MAC_SIZE:
        raise AgeHeaderError("header: MAC has the wrong length")
    return mac


def parse(src: LineSource) -> Header:
    """Read exactly one header from ``src`` and nothing past its last LF."""
    budget = MAX_HEADER_SIZE

    def readline() -> bytes:
        nonlocal budget
        line = src.readline_bounded(min(MAX_LINE_SIZE, budget))
        budget -= len(line)
        return line

    first = readline()
    if not first:
        raise AgeHeaderError("header: file is empty")
    if first != VERSION_LINE:
        # Armored files may be preceded by whitespace, even blank lines.
        while first.endswith(_LF) and not first.strip():
            first = readline()
        if first.lstrip().startswith(ARMOR_BEGIN):
            raise AgeUnsupportedError("ASCII-armored age files are not supported; dearmor first")
        if first.endswith(b"\r\n"):
            raise AgeHeaderError("header: lines must end in LF, not CRLF")
        if first.startswith(VERSION_PREFIX):
            raise AgeHeaderError("header: unsupported age format version")
        raise AgeHeaderError("header: not an age file")

    stanzas: list[Stanza] = []
    line = readline()
    while True:
        if not line.endswith(_LF):
            raise AgeHeaderError("header: truncated")
        if line.startswith(MAC_PREFIX):
            mac = _check_mac_line(line)
            break
        if len(stanzas) >= MAX_STANZAS:
            raise AgeHeaderError("header: too many stanzas")
        stype, args = _check_stanza_line(line)
        body = bytearray()
        while True:
            line = readline()
            if not line.endswith(_LF):
                raise AgeHeaderError("header: truncated")
            text = line[:-1]
            if len(text) > COLUMNS_PER_LINE:
                raise AgeHeaderError("header: stanza body line too long")
            body += b64decode(text)
            if len(text) < COLUMNS_PER_LINE:
                break
        stanzas.append(Stanza(stype, args, bytes(body)))
        line = readline()
    if not stanzas:
        raise AgeHeaderError("header: no recipient stanzas")
    return Header(tuple(stanzas), mac)
