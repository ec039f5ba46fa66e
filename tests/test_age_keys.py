"""Keys: Bech32, recipient and identity parsing, identity files."""

from __future__ import annotations

import pickle
import re
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockd.age import (
    X25519Identity,
    X25519Recipient,
    format_identity_file,
    generate_identity,
    parse_identity,
    parse_identity_file,
    parse_recipient,
)
from dockd.age import bech32
from dockd.errors import AgeError, AgeUnsupportedError, KeyFormatError

# The example key pair from the age specification (c2sp.org/age).
SPEC_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"


def test_spec_key_pair() -> None:
    identity = parse_identity(SPEC_IDENTITY)
    assert str(identity.public()) == SPEC_RECIPIENT
    assert identity.secret_key() == SPEC_IDENTITY
    assert parse_recipient(SPEC_RECIPIENT) == identity.public()


@pytest.mark.parametrize("valid", ["A12UEL5L", "a12uel5l", "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw"])
def test_bip173_valid_strings(valid: str) -> None:
    hrp, _ = bech32.decode(valid)
    assert hrp == valid[: valid.rfind("1")]


def test_bech32_round_trip_keeps_case() -> None:
    assert bech32.encode("age", bytes(32)).startswith("age1")
    assert bech32.encode("AGE-SECRET-KEY-", bytes(32)).startswith("AGE-SECRET-KEY-1")
    assert bech32.decode(bech32.encode("x", b"\x01\x02\xff"))[1] == b"\x01\x02\xff"


@pytest.mark.parametrize("bad, why", [
    (SPEC_RECIPIENT[:-1] + ("q" if SPEC_RECIPIENT[-1] != "q" else "p"), "checksum"),
    (SPEC_RECIPIENT[:10] + SPEC_RECIPIENT[10:].upper(), "mixed case"),
    (SPEC_RECIPIENT.upper(), "uppercase recipient"),
    (SPEC_RECIPIENT[:-8], "truncated"),
    ("age1", "empty"),
    ("", "empty string"),
    (SPEC_IDENTITY, "a secret key is not a recipient"),
    (bech32.encode("age", bytes(31)), "short key"),
    (bech32.encode("age", bytes(33)), "long key"),
    (bech32.encode("ssh", bytes(32)), "wrong type"),
    (" " + SPEC_RECIPIENT, "leading space"),
    (SPEC_RECIPIENT.replace("q", "b", 1), "invalid character"),
])
def test_bad_recipients_are_key_format_errors(bad: str, why: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_recipient(bad)


@pytest.mark.parametrize("declined", [
    "age1pq1" + "q" * 60,
    bech32.encode("age1yubikey", bytes(33)),
])
def test_declined_recipient_types_say_so(declined: str) -> None:
    with pytest.raises(AgeUnsupportedError):
        parse_recipient(declined)


def test_bad_identity_errors_never_quote_the_key() -> None:
    corrupt = SPEC_IDENTITY[:-1] + ("Q" if SPEC_IDENTITY[-1] != "Q" else "P")
    with pytest.raises(KeyFormatError) as info:
        parse_identity_file(f"# comment\n{corrupt}\n")
    assert "line 2" in str(info.value)
    assert corrupt[16:40] not in str(info.value)


@pytest.mark.parametrize("bad", [
    SPEC_IDENTITY.lower(), SPEC_RECIPIENT, bech32.encode("AGE-SECRET-KEY-", bytes(16)), "AGE-SECRET-KEY-1",
])
def test_bad_identities(bad: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_identity(bad)


def test_hybrid_identity_is_declined() -> None:
    with pytest.raises(AgeUnsupportedError):
        parse_identity_file("AGE-SECRET-KEY-PQ-1HZLGZUPT4ETPKDEV8HSGFDCYZ4E522W0A7PU2LHT8EH9W6YLNC3SW78XKG\n")


def test_identity_file_with_comments_blank_lines_crlf_and_several_keys() -> None:
    a, b = generate_identity(), generate_identity()
    text = f"# created: now\r\n\r\n{a.secret_key()}\r\n# another\n{b.secret_key()}"
    parsed = parse_identity_file(text)
    assert [p.public() for p in parsed] == [a.public(), b.public()]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_identity_file_without_keys_is_refused(text: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_identity_file(text)


def test_format_identity_file_matches_age_keygen_layout() -> None:
    identity = generate_identity()
    created = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    text = format_identity_file(identity, created)
    assert text == (
        "# created: 2024-05-06T07:08:09Z\n"
        f"# public key: {identity.public()}\n"
        f"{identity.secret_key()}\n"
    )
    assert parse_identity_file(text)[0].public() == identity.public()
    now = format_identity_file(identity)
    assert re.match(r"# created: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n# public key: age1[a-z0-9]+\nAGE-SECRET-KEY-1[A-Z0-9]+\n\Z", now)


def test_identity_never_shows_its_secret() -> None:
    identity = parse_identity(SPEC_IDENTITY)
    for text in (repr(identity), str(identity), f"{identity}", repr([identity])):
        assert "AGE-SECRET-KEY" not in text
        assert SPEC_RECIPIENT in text
    with pytest.raises(TypeError):
        pickle.dumps(identity)


def test_recipient_equality_and_hash() -> None:
    r = parse_recipient(SPEC_RECIPIENT)
    assert r == X25519Recipient(r.public_bytes)
    assert len({r, parse_recipient(SPEC_RECIPIENT)}) == 1
    assert r != generate_identity().public()
    assert isinstance(generate_identity(), X25519Identity)


def test_generated_identities_differ() -> None:
    assert generate_identity().public() != generate_identity().public()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_key_parsers_only_raise_age_errors(text: str) -> None:
    for parse in (parse_recipient, parse_identity, parse_identity_file):
        try:
            parse(text)
        except AgeError:
            pass
