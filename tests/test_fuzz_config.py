"""Hypothesis over ``dockd.config.parse``: any text yields a Config or a ConfigError, nothing else."""

from hypothesis import HealthCheck, given, settings

from campaigns.fuzz import check_config, config_inputs


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_inputs)
def test_config_parse_yields_config_or_config_error(text):
    check_config(text)


def test_a_bad_value_names_its_key():
    import pytest

    from dockd.config import parse
    from dockd.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse("[upload]\nconcurrency = 0\n")
    assert "upload.concurrency" in str(e.value)
