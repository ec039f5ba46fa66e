"""Hypothesis over the age decryptor: damaged or hostile files raise AgeError, nothing else."""

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.fuzz import IDENTITY, _encrypt, age_inputs, check_age
from dockd.age import decrypt
from dockd.errors import AgeError


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(age_inputs())
def test_decrypt_yields_plaintext_or_age_error(data):
    check_age(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200_000), st.data())
def test_any_single_flipped_bit_is_caught(plain, data):
    ct = bytearray(_encrypt(plain))
    i = data.draw(st.integers(0, len(ct) - 1))
    ct[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(AgeError):
        decrypt(io.BytesIO(bytes(ct)), io.BytesIO(), [IDENTITY])
