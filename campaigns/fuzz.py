"""Fuzzing under hypothesis: the config loader and the age decryptor.

Contract: whatever the input, ``dockd.config.parse`` returns a Config or raises
``ConfigError``, and the age decryptor returns the plaintext or raises
``AgeError``; nothing else escapes. The strategies are shared with
tests/test_fuzz_config.py and tests/test_fuzz_age.py.
"""

from __future__ import annotations

import io
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockd.age import Encryptor, decrypt, generate_identity
from dockd.config import Config, parse
from dockd.errors import AgeError, ConfigError

from .base import Context, Result, timed

IDENTITY = generate_identity()
OTHER = generate_identity()

KEYS = {
    "station": ["id"],
    "paths": ["state_dir", "spool_dir", "runtime_dir"],
    "encryption": ["recipients"],
    "store": ["url", "prefix", "endpoint_url", "region", "addressing_style", "checksum", "multipart_threshold",
              "part_size", "object_lock_mode", "object_lock_days", "timeout", "chunk_size", "credentials_file"],
    "devices": ["source", "inbox_dir", "max_readers", "fuse_helpers"],
    "wipe": ["after"],
    "upload": ["concurrency", "attempts", "backoff_initial", "backoff_max", "rate_limit", "timetable"],
    "spool": ["min_free", "max_size"],
    "metrics": ["textfile", "listen", "interval"],
    "hooks": ["command", "timeout"],
    "log": ["level", "format"],
}

_toml_scalar = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).replace("inf", "inf").replace("nan", "nan")),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=40).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"')
                             .encode("unicode_escape").decode("ascii").replace('\\\\"', '\\"') + '"'),
    st.sampled_from(['"64MiB"', '"1.5GB"', '"-1KiB"', '"9e99TiB"', '"age1qqq"', f'"{IDENTITY.public()}"',
                     '"s3://b/p"', '"file:///tmp/x"', '"https://h/"', '"12:00"', '"25:61"', '[]', '{}',
                     '[{start="00:00", end="23:59", rate_limit="1MiB"}]', '["a", 1]', '"127.0.0.1:9"']),
)


@st.composite
def toml_configs(draw: Any) -> str:
    """Mostly well-formed TOML over the real sections and keys, with hostile values."""
    lines = []
    for section in draw(st.lists(st.sampled_from(sorted(KEYS) + ["bogus"]), max_size=5, unique=True)):
        lines.append(f"[{section}]")
        keys = KEYS.get(section, ["x"]) + ["unknown_key"]
        for k in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            lines.append(f"{k} = {draw(_toml_scalar)}")
    return "\n".join(lines) + "\n"


config_inputs = st.one_of(toml_configs(), st.text(max_size=300),
                          st.binary(max_size=200).map(lambda b: b.decode("latin-1")))


def check_config(text: str) -> None:
    try:
        cfg = parse(text)
    except ConfigError as exc:
        assert str(exc), "a ConfigError must say what is wrong"
        return
    assert isinstance(cfg, Config)


def _encrypt(plain: bytes) -> bytes:
    out = io.BytesIO()
    enc = Encryptor(out, [IDENTITY.public()])
    enc.write(plain)
    enc.close()
    return out.getvalue()


@st.composite
def age_inputs(draw: Any) -> bytes:
    """A real age file, then damaged: bytes flipped, cut, spliced, extended; or noise."""
    kind = draw(st.sampled_from(["mutate", "truncate", "splice", "noise", "header", "intact"]))
    plain = draw(st.binary(max_size=3 * 65536 + 10)) if draw(st.booleans()) else draw(st.binary(max_size=64))
    ct = bytearray(_encrypt(plain))
    if kind == "mutate":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(ct) - 1))
            ct[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        ct = ct[:draw(st.integers(0, len(ct)))]
    elif kind == "splice":
        i = draw(st.integers(0, len(ct)))
        ct = ct[:i] + bytearray(draw(st.binary(max_size=100))) + ct[i:]
    elif kind == "noise":
        ct = bytearray(draw(st.binary(max_size=400)))
    elif kind == "header":
        hdr = draw(st.sampled_from([b"age-encryption.org/v1\n", b"age-encryption.org/v1\n-> X25519 ",
                                    b"-----BEGIN AGE ENCRYPTED FILE-----\n", b"age-encryption.org/v2\n"]))
        ct = bytearray(hdr) + bytearray(draw(st.binary(max_size=300)))
    return bytes(ct)


def check_age(data: bytes) -> None:
    for ids in ([IDENTITY], [OTHER]):
        out = io.BytesIO()
        try:
            decrypt(io.BytesIO(data), out, ids)
        except AgeError:
            continue


def _count(check: Callable[[Any], None], strategy: Any, examples: int, res: Result, label: str) -> None:
    failures: list[str] = []

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(x: Any) -> None:
        try:
            check(x)
        except Exception as exc:  # noqa: BLE001 - recorded, and re-raised so hypothesis shrinks it
            failures.append(f"{label}: {type(exc).__name__}: {exc} on {x!r:.200}")
            raise

    try:
        prop()
    except Exception:  # noqa: BLE001 - the shrunk failure is the last recorded
        pass
    res.add(label, {label: examples}, failures[-1:])


@timed
def campaign(ctx: Context, seed: int | None = None) -> Result:
    res = Result("fuzz")
    n = 20_000 if ctx.large else 600
    _count(check_config, config_inputs, n, res, "config inputs")
    _count(check_age, age_inputs(), n // 4 if ctx.large else n // 3, res, "age files")
    res.notes.append("runs are hypothesis properties; the faults column counts generated inputs")
    return res
