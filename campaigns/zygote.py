"""A pre-warmed parent for dockd processes: imports dockd once, forks one child per request.

Protocol on stdin/stdout, one JSON object per line. In: ``{"id": n, "argv": [...],
"log": path, "kill_at_event": k, "s3_min_part": m}``. Out: ``{"id": n, "pid": p}``
once forked, ``{"id": n, "exit": code}`` when reaped (``-signum`` if killed).
Single-threaded, so forking is safe.
"""

from __future__ import annotations

import json
import os
import select
import sys

from campaigns import child


def _run_child(req: dict) -> int:
    try:
        child.main(req["argv"], req["log"], req.get("kill_at_event", 0), req.get("s3_min_part", 0))
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:  # noqa: BLE001 - a traceback in the child's log, exit 70
        import traceback

        traceback.print_exc()
        return 70
    return 0


def main() -> None:
    out = sys.stdout
    stdin = sys.stdin.buffer
    buf = b""
    pids: dict[int, int] = {}
    while True:
        r, _, _ = select.select([stdin], [], [], 0.01)
        if r:
            data = os.read(stdin.fileno(), 65536)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    os.close(stdin.fileno())
                    code = _run_child(req)
                    try:
                        sys.stdout.flush()
                        sys.stderr.flush()
                    except Exception:  # noqa: BLE001
                        pass
                    os._exit(code)
                pids[pid] = req["id"]
                out.write(json.dumps({"id": req["id"], "pid": pid}) + "\n")
                out.flush()
        while pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.write(json.dumps({"id": pids.pop(pid), "exit": code}) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
