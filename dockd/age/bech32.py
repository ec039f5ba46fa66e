"""Bech32 (BIP 173) as age uses it: no length limit, one case per string.

age keys are Bech32 so that a mistyped or truncated key is caught by the
checksum before it is ever used to encrypt evidence. The checksum is always
computed over the lowercase form; a string may be all upper or all lower case,
never mixed. Unlike BIP 173 there is no 90-character limit, because age's
post-quantum keys are longer than that.
"""

from __future__ import annotations

from ..errors import KeyFormatError

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {c: i for i, c in enumerate(CHARSET)}

SEPARATOR = "1"
CHECKSUM_LENGTH = 6  # six 5-bit groups
# BIP 173's generator polynomial coefficients for the BCH checksum.
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
# The checksum constant for (original) Bech32, not Bech32m: age uses Bech32.
_BECH32_CONST = 1
# Human-readable-part characters allowed by BIP 173: printable US-ASCII.
_HRP_MIN, _HRP_MAX = 33, 126


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= g
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    lower = hrp.lower()
    return [ord(c) >> 5 for c in lower] + [0] + [ord(c) & 31 for c in lower]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or (acc << (to_bits - bits)) & maxv:
        # Leftover bits must be fewer than one input group and all zero, so
        # that every key has exactly one encoding.
        raise KeyFormatError("bech32: invalid padding")
    return out


def encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` under ``hrp``; the result takes the case of ``hrp``."""
    if not hrp or any(not _HRP_MIN <= ord(c) <= _HRP_MAX for c in hrp):
        raise ValueError("bech32: invalid human-readable part")
    if hrp.lower() != hrp and hrp.upper() != hrp:
        raise ValueError("bech32: mixed-case human-readable part")
    values = _convert_bits(data, 8, 5, pad=True)
    poly = _polymod(_hrp_expand(hrp) + values + [0] * CHECKSUM_LENGTH) ^ _BECH32_CONST
    checksum = [(poly >> 5 * (CHECKSUM_LENGTH - 1 - i)) & 31 for i in range(CHECKSUM_LENGTH)]
    encoded = hrp.lower() + SEPARATOR + "".join(CHARSET[v] for v in values + checksum)
    return encoded.upper() if hrp.upper() == hrp and hrp.lower() != hrp else encoded


def decode(s: str) -> tuple[str, bytes]:
    """Return ``(hrp, data)``; ``hrp`` keeps the case it was written in.

    Raises KeyFormatError. Messages never echo ``s``: it may be a secret key.
    """
    if s.lower() != s and s.upper() != s:
        raise KeyFormatError("bech32: mixed case")
    pos = s.rfind(SEPARATOR)
    if pos < 1 or pos + 1 + CHECKSUM_LENGTH > len(s):
        raise KeyFormatError("bech32: separator missing or misplaced")
    hrp = s[:pos]
    if any(not _HRP_MIN <= ord(c) <= _HRP_MAX for c in hrp):
        raise KeyFormatError("bech32: invalid character in human-readable part")
    try:
        values = [_CHARSET_INDEX[c] for c in s[pos + 1:].lower()]
    except KeyError:
        raise KeyFormatError("bech32: invalid character in data part") from None
    if _polymod(_hrp_expand(hrp) + values) != _BECH32_CONST:
        raise KeyFormatError("bech32: invalid checksum")
    return hrp, bytes(_convert_bits(values[:-CHECKSUM_LENGTH], 5, 8, pad=False))
