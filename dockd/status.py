"""``dockd status``: one snapshot, rendered as a table or as JSON.

The snapshot is built from the ledger (the durable truth) and, when the
daemon answers on its control socket, enriched with live progress. Its JSON
schema is documented in the README and versioned by ``schema``.
"""

from __future__ import annotations

import time
from typing import Any

from .config import Config
from .ledger import Ledger
from .model import Phase, RecState

SCHEMA = "dockd-status/1"


def _spool_info(cfg: Config) -> dict[str, Any]:
    import os

    root = cfg.paths.spool_dir
    used = files = 0
    if root.exists():
        for p in root.glob("*.age"):
            try:
                used += p.stat().st_size
                files += 1
            except FileNotFoundError:
                pass
        st = os.statvfs(root)
        free = st.f_bavail * st.f_frsize
    else:
        free = None
    return {"path": str(root), "files": files, "used_bytes": used, "free_bytes": free,
            "min_free_bytes": cfg.spool.min_free, "max_bytes": cfg.spool.max_size or None}


def from_ledger(cfg: Config) -> dict[str, Any]:
    """The status view from the ledger alone (daemon down, or one-shot use)."""
    snap: dict[str, Any] = {
        "schema": SCHEMA,
        "generated_at": time.time(),
        "station": cfg.station.id,
        "daemon": {"running": False},
        "bays": [],
        "sessions": [],
        "queue": {"count": 0, "bytes": 0, "oldest_age_seconds": None},
        "store": {"url": cfg.store.url, "reachable": None, "last_success": None},
        "spool": _spool_info(cfg),
        "attention": [],
    }
    if not cfg.ledger_path.exists():
        return snap
    ledger = Ledger(cfg.ledger_path)
    try:
        now = time.time()
        for s in ledger.sessions(limit=20):
            counts = ledger.counts(session_id=s["id"])
            snap["sessions"].append({
                "id": s["id"], "camera": s["serial"], "profile": s["profile"], "phase": s["phase"],
                "bay": s["bay"], "docked_at": s["docked_at"], "finished_at": s["finished_at"],
                "error": s["error"],
                "recordings": {k: v[0] for k, v in counts.items()},
                "bytes": {k: v[1] for k, v in counts.items()},
                "safe_to_undock": Phase(s["phase"]).is_final,
            })
        pending = ledger.recordings(states=[RecState.SPOOLED, RecState.UPLOADED, RecState.FAILED])
        queued = [r for r in pending if r.spool_path]
        snap["queue"] = {
            "count": len(queued),
            "bytes": sum(r.cipher_size or 0 for r in queued),
            "oldest_age_seconds": (round(now - min(r.updated_at for r in queued), 1) if queued else None),
        }
        for r in ledger.recordings(states=[RecState.FAILED, RecState.ATTENTION]):
            snap["attention"].append({"camera": r.serial, "recording": r.name, "state": r.state.value,
                                      "error": r.last_error, "attempts": r.attempts,
                                      "next_attempt_at": r.next_attempt_at})
        last = [r.updated_at for r in ledger.recordings(states=[RecState.VERIFIED, RecState.WIPED])]
        snap["store"]["last_success"] = max(last) if last else None
    finally:
        ledger.close()
    return snap


def snapshot(cfg: Config) -> dict[str, Any]:
    try:
        from .control import query
    except ImportError:
        return from_ledger(cfg)
    live = query(cfg)
    return live if live is not None else from_ledger(cfg)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render(snap: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    running = snap["daemon"]["running"]
    head = f"dockd status — station {snap['station']}"
    if not running:
        head += "  (daemon not running: from the ledger)"
    console.print(head, style="bold")
    if snap.get("bays"):
        t = Table(title="Bays")
        for col in ("bay", "camera", "profile", "phase", "spooled", "verified", "wiped", "rate", "ETA",
                    "last error", "undock"):
            t.add_column(col)
        for b in snap["bays"]:
            t.add_row(b.get("bay") or "-", b["camera"], b["profile"], b["phase"],
                      f"{b['recordings']['spooled']}/{b['recordings']['total']} {_size(b['bytes']['spooled'])}",
                      f"{b['recordings']['verified']}", f"{b['recordings']['wiped']}",
                      f"{_size(b.get('rate_bps'))}/s" if b.get("rate_bps") else "-",
                      f"{b['eta_seconds']:.0f}s" if b.get("eta_seconds") is not None else "-",
                      (b.get("last_error") or "")[:40],
                      "[green]SAFE TO UNDOCK[/]" if b["safe_to_undock"] else "[red]DO NOT UNDOCK[/]")
        console.print(t)
    if snap["sessions"]:
        t = Table(title="Sessions")
        for col in ("id", "camera", "phase", "recordings", "bytes", "error"):
            t.add_column(col)
        for s in snap["sessions"]:
            recs = ", ".join(f"{v} {k}" for k, v in sorted(s["recordings"].items())) or "none"
            t.add_row(str(s["id"]), s["camera"], s["phase"], recs, _size(sum(s["bytes"].values())),
                      (s["error"] or "")[:50])
        console.print(t)
    q = snap["queue"]
    console.print(f"Upload queue: {q['count']} recordings, {_size(q['bytes'])}"
                  + (f", oldest {q['oldest_age_seconds']:.0f}s" if q["oldest_age_seconds"] else ""))
    st = snap["store"]
    reach = {True: "reachable", False: "UNREACHABLE", None: "unknown"}[st.get("reachable")]
    last = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["last_success"]))
            if st.get("last_success") else "never")
    console.print(f"Store: {st['url']} ({reach}), last verified upload {last}")
    sp = snap["spool"]
    console.print(f"Spool: {sp['files']} files, {_size(sp['used_bytes'])} used, "
                  f"{_size(sp['free_bytes'])} free (pause below {_size(sp['min_free_bytes'])})")
    if snap["attention"]:
        console.print(f"[bold red]{len(snap['attention'])} recording(s) need attention:[/]")
        for a in snap["attention"][:20]:
            console.print(f"  {a['camera']} {a['recording']}: {a['state']} — {a['error']}")


def watch(cfg: Config, interval: float) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    with Live(console=console, auto_refresh=False, screen=False) as live:
        while True:
            snap = snapshot(cfg)
            with console.capture() as cap:
                render(snap, console)
            from rich.text import Text

            live.update(Text.from_ansi(cap.get()), refresh=True)
            time.sleep(interval)
