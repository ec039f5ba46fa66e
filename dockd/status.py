"""``dockd status``: one snapshot, rendered as a table or as JSON.

There is one builder, ``build``, and one schema (``dockd-status/2``,
documented field by field in docs/STATUS.md). Every state in it (phases,
recording counts, the queue) is read from the ledger, the same durable truth
the logs are written beside, so status and logs cannot disagree about state.
A running daemon adds what only it knows (``LiveView``: read progress, rates,
ETAs, store reachability) over its control socket; when it is down the same
builder runs on the ledger alone and says so (``daemon.running: false``).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .errors import UsageError
from .ledger import Ledger, ledger_error
from .model import Phase, RecState, escape_controls
from .technician import acknowledgement

SCHEMA = "dockd-status/2"
SCHEMA_FAMILY = "dockd-status/"

# A bay is safe to undock once its session has finished with the camera: every
# recording verified and wiped (done), or given up on and left intact (attention).
SAFE_PHASES = frozenset({Phase.DONE.value, Phase.ATTENTION.value})

_SPOOLED = (RecState.SPOOLED, RecState.UPLOADED, RecState.VERIFIED, RecState.WIPED)
_VERIFIED = (RecState.VERIFIED, RecState.WIPED)
_FAILED = (RecState.FAILED, RecState.ATTENTION)


@dataclass
class LiveBay:
    """What a running daemon knows about one docked camera beyond the ledger."""

    session: int
    spooled_bytes: int               # includes the recording being copied now
    rate_bps: float | None = None
    eta_seconds: float | None = None
    current: str | None = None
    last_error: str | None = None


@dataclass
class LiveView:
    pid: int
    started_at: float
    bays: dict[str, LiveBay] = field(default_factory=dict)   # camera serial -> live data
    queue_active: int = 0
    queue_delayed: int = 0
    queue_paused: str | None = None
    store_reachable: bool | None = None
    store_last_error: str | None = None
    last_success: float | None = None
    uptime_seconds: float | None = None     # on the monotonic clock: a stepped wall clock moves it not


def _uptime(live: LiveView | None, now: float) -> float | None:
    if live is None:
        return None
    return round(live.uptime_seconds if live.uptime_seconds is not None else now - live.started_at, 1)


def redact_url(url: str) -> str:
    """Drop userinfo (``user:secret@``) and query strings from a store URL."""
    url = re.sub(r"^([a-z0-9+.-]+://)[^/@]*@", r"\1", url, flags=re.I)
    return url.split("?", 1)[0]


def spool_info(cfg: Config) -> dict[str, Any]:
    root = cfg.paths.spool_dir
    used = files = 0
    free: int | None = None
    if root.exists():
        for p in root.glob("*.age"):
            try:
                used += p.stat().st_size
                files += 1
            except FileNotFoundError:
                pass
        st = os.statvfs(root)
        free = st.f_bavail * st.f_frsize
    floor, cap = cfg.spool.min_free, cfg.spool.max_size
    paused = bool((floor and free is not None and free < floor) or (cap and used >= cap))
    return {"path": str(root), "files": files, "used_bytes": used, "free_bytes": free,
            "min_free_bytes": floor, "max_bytes": cap or None, "paused": paused}


def _tally(counts: dict[str, tuple[int, int]]) -> tuple[dict[str, int], dict[str, int]]:
    def pick(states: tuple[RecState, ...], i: int) -> int:
        return sum(counts.get(s.value, (0, 0))[i] for s in states)

    every = tuple(s for s in RecState if s != RecState.SUPERSEDED)
    recs = {"total": pick(every, 0), "spooled": pick(_SPOOLED, 0), "verified": pick(_VERIFIED, 0),
            "wiped": pick((RecState.WIPED,), 0), "failed": pick(_FAILED, 0)}
    byts = {"total": pick(every, 1), "spooled": pick(_SPOOLED, 1), "verified": pick(_VERIFIED, 1),
            "wiped": pick((RecState.WIPED,), 1)}
    return recs, byts


def upload_progress(total: int, verified: int) -> float | None:
    """The share of a camera's bytes proven in the store, 0..1 (to 0.1 %); None when it has none."""
    if total <= 0:
        return None
    return round(max(0.0, min(1.0, verified / total)), 3)


def _acked_session(ledger: Ledger, serial: str, session_id: int) -> dict[str, Any] | None:
    """Who acknowledged this session's attention, when and why; None if no one did."""
    ack = acknowledgement(ledger, serial)
    if ack is None or ack["session"] != session_id:
        return None
    return {"by": ack["by"], "uid": ack["uid"], "at": ack["at"], "reason": ack["reason"]}


def _bays(ledger: Ledger, live: LiveView | None) -> list[dict[str, Any]]:
    """The latest session of every camera not seen leaving. A running daemon keeps
    ``undocked_at`` current (undocks, and leftovers of a previous run at start)."""
    latest: dict[str, dict[str, Any]] = {}
    for s in ledger.sessions(limit=500):          # newest first
        latest.setdefault(s["serial"], s)
    out = []
    for serial, s in latest.items():
        lb = live.bays.get(serial) if live else None
        if live is not None and (lb is None or lb.session != s["id"]):
            continue        # the daemon is not serving this camera
        if live is None and s["undocked_at"] is not None:
            continue
        recs, byts = _tally(ledger.counts(session_id=s["id"]))
        phase = s["phase"]
        safe = phase in SAFE_PHASES
        err = s["error"]
        bay = {
            "bay": s["bay"], "camera": serial, "profile": s["profile"], "session": s["id"],
            "phase": phase, "docked_at": s["docked_at"], "finished_at": s["finished_at"],
            "safe_to_undock": safe, "recordings": recs, "bytes": byts,
            "rate_bps": None, "eta_seconds": None, "current": None, "last_error": err,
            "acknowledged": _acked_session(ledger, serial, s["id"]),
            "upload_progress": upload_progress(byts["total"], byts["verified"]),
        }
        bay["needs_attention"] = phase == Phase.ATTENTION.value and bay["acknowledged"] is None
        if lb is not None:
            bay["bytes"]["spooled"] = max(byts["spooled"], min(lb.spooled_bytes, byts["total"]))
            bay["rate_bps"] = None if lb.rate_bps is None else round(lb.rate_bps, 1)
            bay["eta_seconds"] = None if lb.eta_seconds is None else round(lb.eta_seconds, 1)
            bay["current"] = lb.current
            bay["last_error"] = lb.last_error or err
        out.append(bay)
    out.sort(key=lambda b: (b["bay"] or "", b["camera"]))
    return out


def build(cfg: Config, ledger: Ledger | None, live: LiveView | None = None,
          now: float | None = None) -> dict[str, Any]:
    """The one snapshot, in schema ``dockd-status/2``. ``ledger`` None: no ledger yet."""
    now = time.time() if now is None else now
    snap: dict[str, Any] = {
        "schema": SCHEMA,
        "generated_at": now,
        "station": cfg.station.id,
        "daemon": {"running": live is not None, "pid": live.pid if live else None,
                   "started_at": live.started_at if live else None,
                   "uptime_seconds": _uptime(live, now)},
        "bays": [],
        "sessions": [],
        "queue": {"count": 0, "bytes": 0, "oldest_age_seconds": None,
                  "active": live.queue_active if live else None,
                  "delayed": live.queue_delayed if live else None,
                  "paused": live.queue_paused if live else None},
        "store": {"url": redact_url(cfg.store.url),
                  "reachable": live.store_reachable if live else None,
                  "last_success": live.last_success if live else None,
                  "last_error": live.store_last_error if live else None},
        "spool": spool_info(cfg),
        "attention": [],
        "needs_attention": False,
    }
    if ledger is None:
        return snap
    snap["bays"] = _bays(ledger, live)
    for s in ledger.sessions(limit=20):
        recs, byts = _tally(ledger.counts(session_id=s["id"]))
        snap["sessions"].append({
            "id": s["id"], "camera": s["serial"], "profile": s["profile"], "phase": s["phase"],
            "bay": s["bay"], "docked_at": s["docked_at"], "undocked_at": s["undocked_at"],
            "finished_at": s["finished_at"], "error": s["error"],
            "recordings": recs, "bytes": byts, "safe_to_undock": s["phase"] in SAFE_PHASES,
        })
    pending = ledger.recordings(states=[RecState.SPOOLED, RecState.UPLOADED, RecState.FAILED])
    queued = [r for r in pending if r.spool_path]
    snap["queue"].update({
        "count": len(queued),
        "bytes": sum(r.cipher_size or 0 for r in queued),
        "oldest_age_seconds": (round(max(0.0, now - min(r.updated_at for r in queued)), 1)
                               if queued else None),
    })
    acks: dict[str, dict[str, Any] | None] = {}
    for r in ledger.recordings(states=[RecState.FAILED, RecState.ATTENTION]):
        if r.serial not in acks:
            acks[r.serial] = acknowledgement(ledger, r.serial)
        ack = acks[r.serial]
        snap["attention"].append({"camera": r.serial, "recording": r.name, "state": r.state.value,
                                  "error": r.last_error, "attempts": r.attempts,
                                  "next_attempt_at": r.next_attempt_at,
                                  "needs_attention": ack is None or ack["at"] < r.updated_at})
    snap["needs_attention"] = (any(b["needs_attention"] for b in snap["bays"])
                               or any(a["needs_attention"] for a in snap["attention"]))
    done = [r.updated_at for r in ledger.recordings(states=list(_VERIFIED))]
    if done:
        last = max(done)
        cur = snap["store"]["last_success"]
        snap["store"]["last_success"] = last if cur is None else max(cur, last)
    return snap


def needs_attention(snap: dict[str, Any]) -> bool:
    """What ``dockd status`` exits 1 on: a bay in ``attention`` or a recording in
    ``failed``/``attention`` that no technician has acknowledged since. A snapshot from an
    older daemon, without ``needs_attention``, is judged on its bays and recordings."""
    if "needs_attention" in snap:
        return bool(snap["needs_attention"])
    return bool(snap.get("attention")) or any(b.get("phase") == Phase.ATTENTION.value
                                              for b in snap.get("bays", []))


def from_ledger(cfg: Config) -> dict[str, Any]:
    """The status view from the ledger alone (daemon down, or one-shot use)."""
    if not cfg.ledger_path.exists():
        return build(cfg, None)
    ledger = Ledger(cfg.ledger_path)        # a damaged file raises LedgerDamagedError
    try:
        return build(cfg, ledger)
    except sqlite3.Error as exc:            # damage deeper in the file, met while reading
        raise ledger_error(cfg.ledger_path, exc) from None
    finally:
        ledger.close()


def snapshot(cfg: Config) -> dict[str, Any]:
    from .control import query

    live = query(cfg)
    if live is not None:
        return live
    try:
        return from_ledger(cfg)
    except PermissionError as exc:      # an operator in group dockd, the daemon stopped
        raise UsageError(f"the daemon is not running and {exc.filename or cfg.paths.state_dir} is root's "
                         "alone: start it (systemctl start dockd) or run dockd status as root") from None


# -- rendering -------------------------------------------------------------------

def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _short(n: float | None) -> str:
    """A size in at most 6 characters: 999B, 12.3K, 575M, 1.2G."""
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            if unit == "B":
                return f"{n:.0f}B"
            return f"{n:.1f}{unit}" if abs(n) < 100 else f"{n:.0f}{unit}"
        n /= 1024
    return str(n)


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _percent(b: dict[str, Any]) -> str:
    """Upload progress beside the verified bytes while the bay is still at work."""
    p = b.get("upload_progress")
    if p is None or b["safe_to_undock"]:
        return ""
    return f" {int(p * 100)}%"


def _when(ts: float | None) -> str:
    if not ts:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _t(value: Any) -> str:
    """A value for rich markup: non-printables escaped (a camera names its files, and may
    name itself, with terminal control sequences), and ``[`` escaped so that no camera
    string can style itself (say, as a green "SAFE TO UNDOCK")."""
    from rich.markup import escape

    return escape(escape_controls(str(value)))


def _undock(b: dict[str, Any]) -> str:
    if not b["safe_to_undock"]:
        return "[bold red]DO NOT UNDOCK[/]"
    if b["phase"] == Phase.ATTENTION.value:
        if b.get("acknowledged"):
            return f"[bold yellow]SAFE TO UNDOCK[/]\n[dim]ack'd by {_t(b['acknowledged']['by'])}[/]"
        return "[bold yellow]SAFE TO UNDOCK[/]\n[yellow]see errors[/]"
    return "[bold green]SAFE TO UNDOCK[/]"


def render(snap: dict[str, Any], console: Any = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    head = f"dockd status: station {_t(snap['station'])}"
    if snap["daemon"]["running"]:
        head += f"  (daemon pid {snap['daemon']['pid']}, up {_duration(snap['daemon']['uptime_seconds'])})"
    else:
        head += "  [bold red](daemon not running: from the ledger)[/]"
    console.print(head, style="bold", highlight=False)
    if snap["bays"]:
        t = Table(title="Bays", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 0), title_style="bold")
        t.add_column("Bay", no_wrap=True, max_width=16, overflow="ellipsis")
        t.add_column("Camera", no_wrap=True)
        t.add_column("Phase", no_wrap=True)
        for col in ("Spooled", "Verified", "Wiped"):
            t.add_column(col, justify="right", no_wrap=True)
        t.add_column("Rate/ETA", justify="right", no_wrap=True)
        t.add_column("Undock", no_wrap=True)
        for b in snap["bays"]:
            r, n = b["recordings"], b["bytes"]
            t.add_row(_t(b["bay"] or "-"), f"{_t(b['camera'])}\n[dim]{_t(b['profile'])}[/]", _t(b["phase"]),
                      f"{r['spooled']}/{r['total']}\n{_short(n['spooled'])}",
                      f"{r['verified']}\n{_short(n['verified'])}{_percent(b)}",
                      f"{r['wiped']}\n{_short(n['wiped'])}",
                      (f"{_short(b['rate_bps'])}/s" if b["rate_bps"] else "-")
                      + f"\n{_duration(b['eta_seconds'])}",
                      _undock(b))
        console.print(t)
        for b in snap["bays"]:
            if b["last_error"]:
                console.print(escape_controls(f"  {b['camera']}: {b['last_error']}"), highlight=False,
                              markup=False)
    else:
        console.print("No cameras docked.")
    q = snap["queue"]
    line = f"Upload queue: {q['count']} recording(s), {_size(q['bytes'])}"
    if q["oldest_age_seconds"] is not None:
        line += f", oldest {_duration(q['oldest_age_seconds'])}"
    if q["active"]:
        line += f", {q['active']} uploading"
    if q["paused"]:
        line += f"  [bold red]PAUSED: {_t(q['paused'])}[/]"
    console.print(line, highlight=False)
    st = snap["store"]
    reach = {True: "[green]reachable[/]", False: "[bold red]UNREACHABLE[/]", None: "reachability unknown"}
    line = f"Store: {_t(st['url'])} ({reach[st['reachable']]}), last verified {_when(st['last_success'])}"
    if st["last_error"] and st["reachable"] is False:
        line += f": {_t(st['last_error'][:60])}"
    console.print(line, highlight=False)
    sp = snap["spool"]
    line = (f"Spool: {sp['files']} file(s), {_size(sp['used_bytes'])} used"
            + (f" of {_size(sp['max_bytes'])}" if sp["max_bytes"] else "")
            + f", {_size(sp['free_bytes'])} free (pauses below {_size(sp['min_free_bytes'])})")
    if sp["paused"]:
        line += "  [bold yellow]SPOOLING PAUSED: waiting for uploads[/]"
    console.print(line, highlight=False)
    if snap["attention"]:
        console.print(f"[bold red]{len(snap['attention'])} recording(s) failed or need attention:[/]")
        for a in snap["attention"][:20]:
            retry = (f" (attempt {a['attempts']}, retry at {_when(a['next_attempt_at'])})"
                     if a["next_attempt_at"] else f" (attempt {a['attempts']})")
            console.print(escape_controls(f"  {a['camera']} {a['recording']}: {a['state']}: {a['error']}{retry}"),
                          highlight=False, markup=False)
        if len(snap["attention"]) > 20:
            console.print(f"  … and {len(snap['attention']) - 20} more (dockd status --json)")


def watch(cfg: Config, interval: float, frames: int | None = None) -> dict[str, Any]:
    """Redraw the table in place every ``interval`` seconds until interrupted (or after
    ``frames`` redraws); returns the last snapshot shown.

    Each frame is rendered on a console of its own, off screen: printing on the live
    console while ``Live`` runs would have its render hook append the frame already on
    screen to the capture, and the display would keep showing the first snapshot."""
    import io

    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    console = Console()
    shown = 0
    with Live(console=console, auto_refresh=False, screen=False, transient=False) as live:
        while True:
            snap = snapshot(cfg)
            frame = Console(file=io.StringIO(), width=console.width, force_terminal=console.is_terminal,
                            color_system=console.color_system, no_color=console.no_color,
                            legacy_windows=False)
            render(snap, frame)
            live.update(Group(Text.from_ansi(frame.file.getvalue())), refresh=True)
            shown += 1
            if frames is not None and shown >= frames:
                return snap
            time.sleep(interval)
