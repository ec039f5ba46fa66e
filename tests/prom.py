"""Prometheus side of the tests: promtool, a free loopback port, a scrape, a parse.

promtool comes from Debian's ``prometheus`` package (scripts/setup.sh puts the one
binary beside the virtualenv's python); a missing promtool fails the test that
needs it, loudly, rather than skipping it.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"


def promtool() -> str:
    for cand in (Path(sys.executable).parent / "promtool", REPO / ".venv" / "bin" / "promtool"):
        if cand.exists():
            return str(cand)
    found = shutil.which("promtool")
    assert found, "promtool not found: run ./scripts/setup.sh --test"
    return found


def run_promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], input=stdin, capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for every sample line of an exposition."""
    out: dict[str, float] = {}
    for ln in text.splitlines():
        if ln.startswith("#") or not ln:
            continue
        m = SAMPLE.match(ln)
        assert m, f"bad exposition line: {ln!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def families(text: str) -> set[str]:
    """Every metric name a scrape can be queried by (histograms: _bucket, _sum, _count too)."""
    return {k.split("{", 1)[0] for k in samples(text)}


def tls_files(root: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signs for ``host`` (and localhost):
    returns (ca.pem, server.crt, server.key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dockd test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dockd")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    root.mkdir(parents=True, exist_ok=True)
    paths = root / "ca.pem", root / "server.crt", root / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def web_config(root: Path, users: dict[str, str], tls: bool = True, extra: str = "") -> Path:
    """An exporter-toolkit web config under ``root``: TLS with ``tls_files`` (relative paths,
    as the toolkit resolves them) and ``users`` (name -> password, stored as bcrypt)."""
    import bcrypt

    root.mkdir(parents=True, exist_ok=True)
    text = ""
    if tls:
        tls_files(root)
        text += "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    if users:
        text += "basic_auth_users:\n" + "".join(
            f"  {u}: {bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode().replace('$2b$', '$2y$')}\n"
            for u, p in users.items())
    path = root / "web.yml"
    path.write_text(text + extra)
    return path


def exported(text: str) -> set[str]:
    """The metric names a scrape declares (``# TYPE``), with a histogram's series names:
    what a query may name, whether or not the metric has a sample right now."""
    out: set[str] = set()
    for ln in text.splitlines():
        if ln.startswith("# TYPE "):
            _, _, name, kind = ln.split()
            out.add(name)
            if kind == "histogram":
                out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out


_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana query with $variables) selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                       # strings
    e = re.sub(r"\$\{?\w+\}?", "", e)                                  # Grafana variables
    e = re.sub(r"\{[^}]*\}", "", e)                                    # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                                   # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\blabel_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)", r"\1", e)
    e = re.sub(r"\boffset\s+\w+", "", e)
    names: set[str] = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group().lower() in _PROMQL_WORDS:
            continue                                                   # a function, an operator
        names.add(m.group())
    return names
