"""Commands, thin: parse → call → exit code.

Exit codes: 0 ok, 1 something needs attention, 2 usage or configuration.
One ``main()`` maps every ``DockdError`` to one line on stderr and its exit
code; a traceback is shown only for bugs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterator


import click

from . import config as config_mod
from . import log
from .errors import DockdError, UsageError
from .model import escape_controls

EXIT_OK, EXIT_ATTENTION, EXIT_USAGE = 0, 1, 2


class Ctx:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._cfg: config_mod.Config | None = None
        self._lock: Any = None

    def lock_state_dir(self) -> None:
        """Before the spool, ledger or socket is touched: this process alone writes to
        the state directory until it exits (exit 2 if another dockd holds it)."""
        from .statelock import StateLock

        if self._lock is None:
            self._lock = StateLock(self.cfg.paths.state_dir).acquire()

    def check_ledger(self) -> None:
        """Before a writer relies on it: every page of an existing ledger is readable."""
        from .ledger import Ledger

        if self.cfg.ledger_path.exists():
            ledger = Ledger(self.cfg.ledger_path)
            try:
                ledger.check()
            finally:
                ledger.close()

    @property
    def cfg(self) -> config_mod.Config:
        if self._cfg is None:
            self._cfg = config_mod.load(self.config_path)
            log.configure(self._cfg.log.level, self._cfg.log.format, stream=sys.stderr
                          if os.environ.get("DOCKD_LOG_STDERR") else None)
        return self._cfg


@contextlib.contextmanager
def ledger_errors(path: Path) -> Iterator[None]:
    """A failed SQLite call (damaged file, full disk) becomes one line naming the ledger."""
    from .ledger import ledger_error

    try:
        yield
    except sqlite3.Error as exc:
        raise ledger_error(path, exc) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML configuration (else $DOCKD_CONFIG, else /etc/dockd/dockd.toml, else built-in).")
@click.version_option(package_name="dockd")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """dockd: evidence-safe ingest for body-worn-camera docks."""
    ctx.obj = Ctx(config_path)


# -- keys ---------------------------------------------------------------------

@cli.command()
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the identity here (mode 0600) instead of stdout.")
def keygen(output: Path | None) -> None:
    """Make an age X25519 identity; print its public key (age1…) on stdout."""
    from .age import format_identity_file, generate_identity

    ident = generate_identity()
    text = format_identity_file(ident)
    if output is None:
        click.echo(text, nl=False)
        click.echo(f"Public key: {ident.public()}", err=True)
        return
    if output.exists():
        raise UsageError(f"{output} exists; refusing to overwrite an identity")
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    click.echo(str(ident.public()))


@cli.command()
@click.option("-i", "--identity", "identities", multiple=True, required=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="age identity file (repeatable).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write plaintext here (default stdout).")
@click.argument("input", required=False, type=click.Path(path_type=Path, dir_okay=False, exists=True))
def decrypt(identities: tuple[Path, ...], output: Path | None, input: Path | None) -> None:
    """Decrypt an age file (what the store holds) with an identity."""
    from .age import decrypt as age_decrypt
    from .age import parse_identity_file

    ids = []
    for p in identities:
        ids += parse_identity_file(p.read_text())
    src = open(input, "rb") if input else sys.stdin.buffer
    tmp = None
    try:
        if output is None:
            dst = sys.stdout.buffer
        else:
            tmp = output.with_name(f".{output.name}.partial")
            dst = open(tmp, "wb")
        try:
            age_decrypt(src, dst, ids)
        finally:
            if dst is not sys.stdout.buffer:
                dst.close()
        if tmp is not None:
            os.replace(tmp, output)   # never leave unauthenticated plaintext under the real name
            tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if input:
            src.close()


# -- ingest / run -------------------------------------------------------------

@cli.command()
@click.argument("path", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--serial", help="Camera serial (default: the directory's name).")
@click.option("--profile", default="generic", show_default=True, help="Camera profile.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
@click.pass_obj
def ingest(obj: Ctx, path: Path, serial: str | None, profile: str, progress: bool | None) -> None:
    """Dock the directory PATH as a camera, once: copy, upload, verify, wipe."""
    from .device.events import CameraDocked
    from .station import Station
    from .pipeline.naming import safe_component
    from .ui import ingest_progress

    cfg = obj.cfg
    serial = safe_component(serial or path.resolve().name, 64)
    obj.lock_state_dir()
    obj.check_ledger()
    with ledger_errors(cfg.ledger_path):
        station = Station(cfg, patient=False)
        try:
            station.start()
            ev = CameraDocked(serial=serial, profile=profile, mount=path.resolve())
            show = sys.stderr.isatty() if progress is None else progress
            with ingest_progress(show) as on_progress:
                outcome = station.run_session(ev, progress=on_progress)
        finally:
            station.close()
    summary = (f"{serial}: {outcome.found} found, {outcome.verified} verified, "
               f"{outcome.wiped} wiped, {len(outcome.failed)} not safe, {len(outcome.refused)} refused "
               f"→ {outcome.phase.value}")
    click.echo(escape_controls(summary))
    for name, why in outcome.failed + outcome.refused:
        click.echo(escape_controls(f"  {name}: {why}"), err=True)
    for name, why in outcome.unlisted:
        click.echo(escape_controls(f"  {name}/: directory could not be listed: {why}"), err=True)
    if not outcome.ok:
        sys.exit(EXIT_ATTENTION)


@cli.command()
@click.pass_obj
def run(obj: Ctx) -> None:
    """The daemon: watch for cameras and process each one."""
    from .daemon import Daemon

    obj.lock_state_dir()
    obj.check_ledger()
    with ledger_errors(obj.cfg.ledger_path):
        code = Daemon(obj.config_path, obj.cfg).run()
    sys.exit(code)


# -- status -------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable snapshot (stable schema).")
@click.option("--watch", is_flag=True, help="Refresh in place until interrupted.")
@click.option("--interval", default=1.0, show_default=True, help="Refresh interval for --watch.")
@click.option("--frames", type=click.IntRange(min=1), default=None, hidden=True,
              help="With --watch: stop after this many refreshes (for tests).")
@click.pass_obj
def status(obj: Ctx, as_json: bool, watch: bool, interval: float, frames: int | None) -> None:
    """Every bay: camera, phase, progress, safe to undock; the queue; the spool.
    Exit 1 when a bay or a recording needs attention (see the README)."""
    from . import status as status_mod

    if watch and not as_json:
        snap = status_mod.watch(obj.cfg, interval, frames)
    else:
        snap = status_mod.snapshot(obj.cfg)
        if as_json:
            click.echo(json.dumps(snap, indent=2, sort_keys=True))
        else:
            status_mod.render(snap)
    if status_mod.needs_attention(snap):
        sys.exit(EXIT_ATTENTION)


# -- a technician's answers to attention -----------------------------------------

def _technician(obj: Ctx, op: str, serial: str, **args: Any) -> dict[str, Any]:
    """Through the running daemon's control socket (it learns who asks from the kernel);
    when no daemon answers, on the ledger directly, under the state directory's lock."""
    from . import technician
    from .control import operate
    from .ledger import Ledger

    cfg = obj.cfg
    reply = operate(cfg, op, serial, **args)
    if reply is not None:
        if "error" in reply:
            raise UsageError(str(reply["error"]))
        return reply
    obj.lock_state_dir()          # the daemon is down: no other writer may start meanwhile
    if not cfg.ledger_path.exists():
        raise UsageError(f"no ledger at {cfg.ledger_path}")
    obj.check_ledger()
    with ledger_errors(cfg.ledger_path):
        ledger = Ledger(cfg.ledger_path)
        try:
            actor = technician.Actor.me()
            if op == "retry":
                return technician.retry(ledger, serial, actor).as_dict()
            return technician.acknowledge(ledger, serial, args["reason"], actor)
        finally:
            ledger.close()


@cli.command()
@click.argument("serial")
@click.pass_obj
def retry(obj: Ctx, serial: str) -> None:
    """Try SERIAL's failed recordings again, without a re-dock: those with a spool copy
    are queued for upload; those never copied need the camera docked again (exit 1)."""
    out = _technician(obj, "retry", serial)
    click.echo(escape_controls(f"{serial}: {len(out['requeued'])} recording(s) queued for upload again"))
    for name in out["requeued"]:
        click.echo(escape_controls(f"  queued: {name}"))
    if out["need_camera"]:
        click.echo(escape_controls(f"{serial}: {len(out['need_camera'])} recording(s) were never copied; "
                                   "dock the camera again to copy them:"), err=True)
        for name in out["need_camera"]:
            click.echo(escape_controls(f"  needs the camera: {name}"), err=True)
        sys.exit(EXIT_ATTENTION)


@cli.command()
@click.argument("serial")
@click.option("--reason", required=True, help="What you looked at and why it is in order (audited).")
@click.pass_obj
def acknowledge(obj: Ctx, serial: str, reason: str) -> None:
    """Record that you have looked at SERIAL's bay in attention, and why. Audited in the
    ledger's event log with your Unix user; no recording is changed or deleted."""
    out = _technician(obj, "acknowledge", serial, reason=reason)
    click.echo(escape_controls(f"{serial}: session {out['session']} acknowledged by {out['by']}: "
                               f"{out['reason']}"))


# -- demo -----------------------------------------------------------------------

@cli.command()
@click.option("--keep", is_flag=True, help="Keep the throwaway station directory and print its path.")
def demo(keep: bool) -> None:
    """A whole dock → wipe cycle on fixture footage: no hardware, no setup."""
    from .demo import run_demo

    sys.exit(run_demo(keep=keep))


# -- chain of custody -------------------------------------------------------------

@cli.command("station-key")
@click.option("--allowed-signers", is_flag=True,
              help="Print an allowed_signers line for ssh-keygen -Y verify instead of the bare key.")
@click.pass_obj
def station_key(obj: Ctx, allowed_signers: bool) -> None:
    """Print the station's public signing key (made on first use) in OpenSSH format."""
    from .custody import StationKey

    cfg = obj.cfg
    key = StationKey.load_or_create(cfg.paths.state_dir, cfg.station.id)
    click.echo(key.allowed_signers_line() if allowed_signers else key.public_line())


@cli.group()
def audit() -> None:
    """The station's hash-chained audit log."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@click.pass_obj
def audit_verify(obj: Ctx, as_json: bool) -> None:
    """Check the audit log's hash chain; exit 1 at the first break."""
    from .errors import LedgerError
    from .ledger import Ledger

    path = obj.cfg.ledger_path
    if not path.exists():
        raise UsageError(f"no ledger at {path}")
    try:
        with ledger_errors(path):
            ledger = Ledger(path)
            try:
                count = ledger.verify_chain()
            finally:
                ledger.close()
    except LedgerError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "ledger": str(path), "error": str(exc)}))
        raise
    if as_json:
        click.echo(json.dumps({"ok": True, "ledger": str(path), "events": count}))
    else:
        click.echo(f"audit chain intact: {count} events in {path}")


@cli.command("verify")
@click.option("--store", "store_url", help="Store URL (default: store.url from the configuration).")
@click.option("--station-key", "station_key_arg", required=True,
              help="The station's public key: 'ssh-ed25519 AAAA…', or a file holding it "
                   "(key line, authorized_keys or allowed_signers; several keys are all trusted).")
@click.option("-i", "--identity", "identities", multiple=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="age identity file: also decrypt every object and check its plaintext SHA-256.")
@click.option("--prefix", default="", help="Only manifests and objects under this key prefix.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_obj
def verify_cmd(obj: Ctx, store_url: str | None, station_key_arg: str, identities: tuple[Path, ...],
               prefix: str, as_json: bool) -> None:
    """Re-check a store against its signed manifests, as an auditor would."""
    from .age import parse_identity_file
    from .custody import load_public_keys
    from .errors import VerifyFailed
    from .store.factory import open_backend, policy_for
    from .store.retry import RetryingStore
    from .verify import Auditor, plural, render

    cfg = obj.cfg
    trusted = load_public_keys(station_key_arg)
    ids = []
    for p in identities:
        ids += parse_identity_file(p.read_text())
    if store_url:
        cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"url": store_url})})
    store = RetryingStore(open_backend(cfg), policy_for(cfg))
    try:
        report = Auditor(store, trusted, ids, prefix).run()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        render(report)
    if not report.manifests:
        raise VerifyFailed(f"no manifests under {store.url}{'/' + prefix if prefix else ''}")
    if not report.ok:
        raise VerifyFailed(f"{plural(report.discrepancies, 'discrepancy')} between the store and its "
                           "signed manifests")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="dockd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except DockdError as exc:
        click.echo(f"dockd: {escape_controls(str(exc))}", err=True)   # it may quote a camera's names
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(EXIT_OK)


if __name__ == "__main__":      # python -m dockd.cli, as the tests run it
    main()
