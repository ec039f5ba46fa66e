"""Config errors: one line naming the key, exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dockd import config
from dockd.errors import ConfigError

PUB = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"   # the age spec's example key

GOOD = f"""
[station]
id = "dock-01"
[paths]
state_dir = "/var/lib/dockd"
spool_dir = "/var/lib/dockd/spool"
[encryption]
recipients = ["{PUB}"]
[store]
url = "file:///srv/evidence"
[devices]
source = "inbox"
inbox_dir = "/var/lib/dockd/inbox"
[wipe]
after = "verified"
"""


def test_the_documented_example_parses():
    cfg = config.parse(GOOD)
    assert cfg.station.id == "dock-01"
    assert cfg.paths.spool_dir == Path("/var/lib/dockd/spool")
    assert cfg.encryption.recipients == [PUB]
    assert cfg.store.url == "file:///srv/evidence"
    assert cfg.devices.source == "inbox" and cfg.wipe.after == "verified"


@pytest.mark.parametrize("text, key, words", [
    ("[station\nid='x'", "", "not valid toml"),                                   # syntax
    (GOOD + "\n[surprise]\nx = 1\n", "surprise", "unknown key"),                  # unknown section
    (GOOD.replace('id = "dock-01"', 'id = "dock-01"\ncolour = "blue"'), "station.colour", "unknown key"),
    (GOOD.replace('after = "verified"', 'after = "never"'), "wipe.after", "verified"),          # enum
    (GOOD.replace('source = "inbox"', "source = 3"), "devices.source", "inbox"),                 # type
    (GOOD.replace(PUB, "age1notakey"), "encryption.recipients", "recipient 1"),                  # bad key
    (GOOD.replace("file:///srv/evidence", "ftp://x"), "store.url", "file://"),                   # scheme
    (GOOD + "\n[spool]\nmin_free = \"lots\"\n", "spool.min_free", "size"),                       # size
    (GOOD + "\n[upload]\nconcurrency = 0\n", "upload.concurrency", "greater"),                   # range
    (GOOD.replace('id = "dock-01"', 'id = "../etc"'), "station.id", "pattern"),                  # pattern
])
def test_each_kind_of_error_names_its_key(text, key, words):
    with pytest.raises(ConfigError) as ei:
        config.parse(text, "dockd.toml")
    err = ei.value
    assert err.key == key
    assert words in str(err).lower()
    assert err.exit_code == 2
    assert "\n" not in str(err)


@pytest.mark.parametrize("body, key, words", [
    ('[store]\nprefix = "../../x"', "store.prefix", "'../../x'"),                # climbs out
    ('[store]\nprefix = "/abs/olute"', "store.prefix", "not starting with '/'"),
    ('[store]\nprefix = "ev/./x"', "store.prefix", "starting with '.'"),
    ('[store]\nprefix = "a\\u001b[2Jb"', "store.prefix", "segments"),             # control characters
    ('[store]\nprefix = "a\\u009bb"', "store.prefix", "segments"),                # C1 control
    ('[paths]\nstate_dir = ""', "paths.state_dir", "absolute"),                  # "" is "."
    ('[metrics]\ntextfile = ""', "metrics.textfile", "absolute"),
    ('[metrics]\ntextfile = "dockd.prom"', "metrics.textfile", "absolute"),
    ('[paths]\nspool_dir = ""', "paths.spool_dir", "absolute"),
    ('[paths]\nruntime_dir = ""', "paths.runtime_dir", "absolute"),
    ('[paths]\nstate_dir = "var/lib/dockd"', "paths.state_dir", "absolute"),
    ('[paths]\nstate_dir = "/var/lib/\\u0007dockd"', "paths.state_dir", "control"),
    ('[devices]\ninbox_dir = "inbox"', "devices.inbox_dir", "absolute"),
    ('[devices]\nmount_dir = ""', "devices.mount_dir", "absolute"),
    ('[store]\nurl = "file:///dev/null"', "store.url", "not a place"),          # a device
    ('[store]\nurl = "file:///proc/self"', "store.url", "not a place"),
    ('[store]\nurl = "file://{file}"', "store.url", "not a directory"),          # a regular file
    ('[store]\nurl = "file://srv/evidence"', "store.url", "host 'srv'"),        # relative, really a host
    ('[store]\nurl = "file://"', "store.url", "absolute"),
    ('[store]\nurl = "file:///"', "store.url", "absolute"),
    ('[store]\nurl = "file:///srv/\\u001b[2J"', "store.url", "control"),
    ('[store]\nurl = "s3://My_Bucket/evidence"', "store.url", "bucket name"),
    ('[store]\nurl = "s3://ab"', "store.url", "bucket name"),
    ('[store]\nurl = "s3://a..b/x"', "store.url", "bucket name"),
    ('[store]\nurl = "s3://192.168.1.10/x"', "store.url", "bucket name"),
    ('[store]\nurl = "s3:///evidence"', "store.url", "bucket name"),
    ('[store]\nurl = "s3://evidence-bucket/../x"', "store.url", "key prefix"),
    ('[store]\nurl = "https:///files/"', "store.url", "no host"),
])
def test_values_that_would_fail_later_are_refused_at_load(tmp_path, body, key, words):
    """Each of these used to load and then misbehave: keys escaping the prefix, a ledger
    written to the current directory, an ingest that never returned."""
    (tmp_path / "f").write_text("x")
    text = f'[encryption]\nrecipients = ["{PUB}"]\n' + body.replace("{file}", str(tmp_path / "f"))
    with pytest.raises(ConfigError) as ei:
        config.parse(text, "dockd.toml")
    assert ei.value.key == key and words in str(ei.value), str(ei.value)
    assert ei.value.exit_code == 2 and "\n" not in str(ei.value)
    assert all(ch.isprintable() for ch in str(ei.value)), repr(str(ei.value))


@pytest.mark.parametrize("body", [
    '[store]\nprefix = ""', '[store]\nprefix = "evidence/site-1/v2.0"',
    '[store]\nurl = "s3://evidence-bucket"', '[store]\nurl = "s3://t-0123abc/e"',
    '[store]\nurl = "file:///srv/not/made/yet"', '[store]\nurl = "https://tus.example.org/files/"',
])
def test_ordinary_values_still_load(body):
    config.parse(f'[encryption]\nrecipients = ["{PUB}"]\n' + body)


def test_sizes_accept_units():
    assert config.parse_size("64MiB") == 64 << 20
    assert config.parse_size("1GB") == 10**9
    assert config.parse_size(4096) == 4096
    with pytest.raises(ValueError):
        config.parse_size(-1)


def test_lookup_order(tmp_path, monkeypatch):
    f = tmp_path / "a.toml"
    f.write_text(GOOD.replace("dock-01", "dock-env"))
    monkeypatch.setenv("DOCKD_CONFIG", str(f))
    assert config.load().station.id == "dock-env"
    g = tmp_path / "b.toml"
    g.write_text(GOOD.replace("dock-01", "dock-flag"))
    assert config.load(g).station.id == "dock-flag"          # --config wins over the environment


def test_embedded_default_is_per_user(monkeypatch, tmp_path):
    monkeypatch.delenv("DOCKD_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "nope.toml")
    cfg = config.load()
    assert cfg.source == "embedded default"
    assert str(cfg.paths.state_dir).startswith(str(tmp_path))
    assert cfg.store.url.startswith(f"file://{tmp_path}")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "dockd", *args], capture_output=True, text=True, env=e,
                          timeout=60)


@pytest.mark.parametrize("body, key", [
    ("[station]\nid = 'dock-01'\nfoo = 1\n", "station.foo"),
    ("[wipe]\nafter = 'sometimes'\n", "wipe.after"),
    ("not toml at all [", ""),
])
def test_cli_bad_config_is_one_line_exit_2(tmp_path, body, key):
    f = tmp_path / "dockd.toml"
    f.write_text(body)
    r = run_cli("--config", str(f), "status")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert key in lines[0] and "config error" in lines[0]


@pytest.mark.parametrize("body, key", [
    ('[paths]\nstate_dir = ""', "paths.state_dir"),
    ('[store]\nprefix = "../../x"', "store.prefix"),
    ('[store]\nurl = "file:///dev/null"', "store.url"),
])
@pytest.mark.parametrize("command", ["ingest", "run"])
def test_cli_refuses_at_load_what_would_fail_later(tmp_path, body, key, command):
    """Before any file is written: no ledger in the current directory, nothing in the
    store, and an ingest that returns."""
    (tmp_path / "cam").mkdir()
    (tmp_path / "cam" / "a.mp4").write_bytes(b"x" * 100)
    f = tmp_path / "dockd.toml"
    f.write_text(f'[encryption]\nrecipients = ["{PUB}"]\n{body}\n')
    args = ["ingest", str(tmp_path / "cam")] if command == "ingest" else ["run"]
    r = subprocess.run([sys.executable, "-m", "dockd", "--config", str(f), *args], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "config error" in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam", "dockd.toml"]
    assert (tmp_path / "cam" / "a.mp4").exists()


def test_cli_missing_config_file_is_exit_2(tmp_path):
    r = run_cli("--config", str(tmp_path / "missing.toml"), "status")
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_cli_non_utf8_config(tmp_path):
    f = tmp_path / "dockd.toml"
    f.write_bytes(b"[station]\nid = '\xff\xfe'\n")
    r = run_cli("--config", str(f), "status")
    assert r.returncode == 2 and "UTF-8" in r.stderr


def test_readme_documents_every_config_key():
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = []
    for section, field in config.Config.model_fields.items():
        if section == "source":
            continue
        for key in field.annotation.model_fields:
            if not re.search(rf"\b{key}\b", readme):
                missing.append(f"{section}.{key}")
    assert not missing, f"config keys not documented in README: {missing}"


# -- the channel a store's proof comes over --------------------------------------------

S3_OFF_LOOPBACK = GOOD.replace('url = "file:///srv/evidence"',
                               'url = "s3://evidence"\nendpoint_url = "http://192.0.2.10:9000"')


@pytest.mark.parametrize("text, key", [
    (S3_OFF_LOOPBACK, "store.endpoint_url"),
    (GOOD.replace("file:///srv/evidence", "http://192.0.2.10:1080/files/"), "store.url"),        # tus
    (GOOD.replace("file:///srv/evidence", "http://tus.example.org/files/"), "store.url"),
    (GOOD.replace("file:///srv/evidence", "s3://evidence-bucket\"\nendpoint_url = \"http://127.0.0.2.nip.io:9"), "store.endpoint_url"),
    (GOOD.replace("file:///srv/evidence", "s3://evidence-bucket\"\nendpoint_url = \"http://[::ffff:10.0.0.1]:9"), "store.endpoint_url"),
    (GOOD.replace("file:///srv/evidence", "s3://evidence-bucket\"\nendpoint_url = \"http://127.0.0.1@192.0.2.10:9"), "store.endpoint_url"),
    (GOOD.replace("file:///srv/evidence", "s3://evidence-bucket\"\nendpoint_url = \"HTTP://localhost.example.org:9"), "store.endpoint_url"),
])
def test_plain_http_off_loopback_is_refused_at_load(text, key):
    with pytest.raises(ConfigError) as ei:
        config.parse(text, "dockd.toml")
    assert ei.value.key == key
    assert "plain http" in str(ei.value) and "store.trust_plain_http" in str(ei.value)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "http://127.8.9.10:9000", "http://[::1]:9000",
                                      "http://localhost:9000", "http://LOCALHOST:9000",
                                      "https://192.0.2.10:9000"])
def test_loopback_or_https_endpoints_load(endpoint):
    cfg = config.parse(GOOD.replace('url = "file:///srv/evidence"',
                                    f'url = "s3://evidence"\nendpoint_url = "{endpoint}"'))
    assert cfg.store.endpoint_url == endpoint and cfg.store.trust_plain_http is False


def test_trust_plain_http_lets_an_off_loopback_endpoint_load():
    cfg = config.parse(S3_OFF_LOOPBACK.replace("[store]", "[store]\ntrust_plain_http = true"))
    assert cfg.store.trust_plain_http is True and cfg.store.endpoint_url == "http://192.0.2.10:9000"


def test_an_endpoint_that_is_not_a_url_is_refused():
    with pytest.raises(ConfigError) as ei:
        config.parse(S3_OFF_LOOPBACK.replace("http://192.0.2.10:9000", "192.0.2.10:9000"))
    assert ei.value.key == "store.endpoint_url"


def test_verify_tls_off_with_a_ca_bundle_is_a_contradiction():
    with pytest.raises(ConfigError) as ei:
        config.parse(GOOD.replace('url = "file:///srv/evidence"',
                                  'url = "https://tus.example.org/files/"\nca_bundle = "/etc/ca.pem"\n'
                                  "verify_tls = false"))
    assert ei.value.key == "store.verify_tls"


def test_cli_plain_http_store_is_one_line_exit_2(tmp_path):
    f = tmp_path / "dockd.toml"
    f.write_text(S3_OFF_LOOPBACK)
    r = run_cli("--config", str(f), "status")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "config error: store.endpoint_url: plain http" in lines[0]


def test_shipped_config_refuses_to_run_in_one_line_until_recipients_are_set():
    """The package's /etc/dockd/dockd.toml (systemd/dockd.toml): `dockd run` with it
    says what is missing in one line naming encryption.recipients, exit 2, and
    touches nothing (the check comes before any state directory is made)."""
    repo = Path(__file__).resolve().parents[1]
    shipped = repo / "systemd" / "dockd.toml"
    cfg = config.load(shipped)
    assert cfg.encryption.recipients == [] and cfg.devices.source == "udev"
    out = subprocess.run([sys.executable, "-m", "dockd", "--config", str(shipped), "run"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)})
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "encryption.recipients" in out.stderr, out.stderr


def test_an_operator_who_may_not_look_at_the_store_still_loads_the_configuration():
    """`dockd status` by an operator in group dockd reads the same configuration as the
    daemon, but may not look inside /var/lib/dockd: the store check must not turn that into
    a traceback (found by the real-systemd test)."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="dockd-operator-"))
    try:
        top.chmod(0o755)
        root = top / "locked"
        (root / "store").mkdir(parents=True)
        root.chmod(0o700)
        cfg = top / "dockd.toml"
        cfg.write_text(GOOD.replace("file:///srv/evidence", f"file://{root}/store"))
        cfg.chmod(0o644)
        probe = ("import sys; from pathlib import Path; from dockd import config; "
                 "c = config.load(Path(sys.argv[1])); print(c.store.url)")
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                            sys.executable, "-c", probe, str(cfg)], capture_output=True, text=True, timeout=30,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    finally:
        shutil.rmtree(top)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"file://{root}/store"
