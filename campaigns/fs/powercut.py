"""A filesystem that forgets what was never made durable: power cuts for tests.

``PowerCutFS`` is a FUSE passthrough to a backing directory that keeps, beside
what every process sees, a model of what the disk holds durably. A "cut"
(``Instance.cut``: the mount is taken down, the backing rebuilt from the
durable model, and mounted again) leaves exactly what a disk would show after
the power went out at that moment. What becomes durable, and when:

* a file's bytes (and size): on ``fsync``/``fdatasync`` of that file;
* a name (create, mkdir, rename, link, unlink, rmdir): when its directory is
  fsynced, in ``pessimistic`` mode. In ``ext4`` mode any fsync commits the
  whole metadata journal (every name change so far, in every directory), and a
  rename over an existing file carries its source's bytes with it (ext4's
  ``auto_da_alloc``: the rename is never durable before the data it names);
* ``syncfs(2)``/``sync(2)``: nothing. A FUSE server never hears of them: the
  kernel sends ``FUSE_SYNCFS`` only to servers that set ``fc->sync_fs``, which
  only virtiofs does, and writes back its own dirty pages as ordinary writes
  (without ``writeback_cache`` there are none). So on any FUSE filesystem
  (exfat-fuse, sshfs, a FUSE NAS client) a syncfs makes nothing durable, and
  this layer says so: that is how the kernel treats it.

Not modelled: the disk's own write cache ignoring a flush; torn or reordered
writes inside one file (a file is durable whole, at its last fsync); a cut
in the middle of an fsync (each fsync is atomic); attribute changes (mode,
times) are durable at once; xattrs and rename flags (``RENAME_NOREPLACE``) are
not supported. Data is durable per file, not per page.

Why mfusepy: a maintained fork of fusepy (ctypes over the libfuse2/libfuse3
high-level API, releases in 2025/2026), pure Python with no build step, so it
installs beside the Debian ``fuse3`` runtime the tests already need; pyfuse3
must be compiled against libfuse3-dev and brings trio, and the async low-level
API buys nothing for a test filesystem that runs single-threaded on purpose:
while one fsync is held at a cut, nothing else in that filesystem moves.

A campaign makes cuts at the N-th durable operation (fsync, fdatasync,
fsyncdir) counted over several instances through a shared ``Control`` file:
the operation that reaches N is held, never applied, and every later durable
operation of every instance is held too, until the instances are cut.

Run as a server: ``python -m campaigns.fs.powercut BACKING MOUNT --mode M
[--control FILE] [--name NAME]``; stdin takes ``cut``, ``reset [MODE]`` (empty the
filesystem) and ``stop``; stdout says ``ready`` after each mount.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import mmap
import os
import shutil
import stat
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("pessimistic", "ext4")
_CTL = struct.Struct("<QQQ")       # durable ops seen, cut at (0: never), fired
_WHY = 64                          # bytes after the counters: what the cut interrupted


class Control:
    """A counter of durable operations shared by instances (processes) through a file."""

    SIZE = _CTL.size + _WHY

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists() or self.path.stat().st_size < self.SIZE:
            self.path.write_bytes(b"\0" * self.SIZE)
        self._fd = os.open(self.path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, self.SIZE)

    def _locked(self, fn):  # noqa: ANN001, ANN202
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            return fn(*_CTL.unpack_from(self._map, 0))
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def arm(self, cut_at: int) -> None:
        """Count from zero again; the ``cut_at``-th durable operation (0: none) is cut."""
        def set_(_n: int, _c: int, _f: int) -> None:
            _CTL.pack_into(self._map, 0, 0, cut_at, 0)
            self._map[_CTL.size:self.SIZE] = b"\0" * _WHY
        self._locked(set_)

    def tick(self, what: str) -> bool:
        """One durable operation: True if it may be applied, False if the power is out."""
        def step(n: int, cut_at: int, fired: int) -> bool:
            if fired:
                return False
            n += 1
            if cut_at and n >= cut_at:
                _CTL.pack_into(self._map, 0, n, cut_at, 1)
                self._map[_CTL.size:self.SIZE] = what.encode(errors="replace")[:_WHY].ljust(_WHY, b"\0")
                return False
            _CTL.pack_into(self._map, 0, n, cut_at, 0)
            return True
        return self._locked(step)

    @property
    def count(self) -> int:
        return self._locked(lambda n, c, f: n)

    def fired(self) -> str | None:
        """What the cut interrupted ("station: fsync /state/ledger.sqlite3-wal"), or None."""
        return self._locked(lambda n, c, f: self._map[_CTL.size:self.SIZE].rstrip(b"\0").decode(errors="replace")
                            if f else None)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


@dataclass
class Node:
    """One inode of the model. A file is ``clean`` while its live bytes are its durable
    bytes; once dirtied, its durable bytes are kept in ``saved`` (None: empty)."""

    kind: str                                       # "file", "dir", "symlink"
    clean: bool = True
    saved: Path | None = None
    target: str = ""                                # a symlink's
    live: dict[str, int] = field(default_factory=dict)      # a directory's names now
    durable: dict[str, int] = field(default_factory=dict)   # ... and on the disk


def _bpath(p: str) -> bytes:
    return os.fsencode(p)


class PowerCutFS:
    """The mfusepy operations. Single-threaded (``nothreads``): see the module's doc."""

    use_ns = True

    def __init__(self, backing: Path, shadow: Path, mode: str, control: Control | None = None,
                 name: str = "fs") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.root = os.fsencode(str(Path(backing).resolve()))
        self.shadow = Path(shadow)
        self.mode = mode
        self.control = control
        self.name = name
        self.cutting = threading.Event()
        self.on_ready: Any = None
        self._load()

    # -- the model ------------------------------------------------------------------------
    def _load(self) -> None:
        """After a mount: everything in the backing directory is durable."""
        shutil.rmtree(self.shadow, ignore_errors=True)
        self.shadow.mkdir(parents=True)
        self.nodes: dict[int, Node] = {}
        self.by_ino: dict[int, int] = {}            # backing inode -> node id
        self.fh_node: dict[int, int] = {}           # open fd -> node id
        self.journal: set[int] = set()              # directories with names not committed
        self._next = 0
        self.root_id = self._scan(self.root)

    def _new(self, node: Node, ino: int) -> int:
        self._next += 1
        self.nodes[self._next] = node
        self.by_ino[ino] = self._next
        return self._next

    def _scan(self, path: bytes) -> int:
        st = os.lstat(path)
        if st.st_ino in self.by_ino:
            return self.by_ino[st.st_ino]           # a hard link
        if stat.S_ISDIR(st.st_mode):
            nid = self._new(Node("dir"), st.st_ino)
            for name in os.listdir(path):
                cid = self._scan(os.path.join(path, name))
                self.nodes[nid].live[os.fsdecode(name)] = cid
            self.nodes[nid].durable = dict(self.nodes[nid].live)
            return nid
        if stat.S_ISLNK(st.st_mode):
            return self._new(Node("symlink", target=os.fsdecode(os.readlink(path))), st.st_ino)
        return self._new(Node("file"), st.st_ino)

    def _b(self, path: str) -> bytes:
        return self.root + _bpath(path)

    def _id(self, path: str) -> int:
        return self.by_ino[os.lstat(self._b(path)).st_ino]

    def _parent(self, path: str) -> tuple[Node, int, str]:
        head, name = os.path.split(path)
        pid = self._id(head or "/")
        return self.nodes[pid], pid, name

    def _dirty(self, nid: int, path: bytes | None = None, fd: int | None = None) -> None:
        """Before the first change to a clean file: keep its durable bytes."""
        node = self.nodes[nid]
        if not node.clean or node.kind != "file":
            return
        keep = self.shadow / str(nid)
        if fd is not None:
            with open(keep, "wb") as out:
                off = 0
                while chunk := os.pread(fd, 1 << 20, off):
                    out.write(chunk)
                    off += len(chunk)
            st = os.fstat(fd)
            os.chmod(keep, stat.S_IMODE(st.st_mode))
            os.utime(keep, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            shutil.copy2(path, keep)
        node.clean, node.saved = False, keep

    def _named(self, pid: int) -> None:
        self.journal.add(pid)

    def _forget(self, path: bytes) -> int | None:
        """A name is about to go: keep the durable bytes of a file losing its last link."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        nid = self.by_ino.get(st.st_ino)
        if nid is not None and (st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode)):
            if nid is not None and self.nodes[nid].kind == "file":
                self._dirty(nid, path)
            self.by_ino.pop(st.st_ino, None)
        return nid

    def _durable(self, what: str) -> None:
        if self.control is not None and not self.control.tick(f"{self.name}: {what}"):
            self.cutting.wait(60)                   # the power is out: held until the cut
            raise OSError(errno.EIO, "power cut")

    def _commit(self, pid: int) -> None:
        if self.mode == "ext4":                     # the journal commits every name change so far
            for d in self.journal:
                self.nodes[d].durable = dict(self.nodes[d].live)
            self.journal.clear()
        else:
            self.nodes[pid].durable = dict(self.nodes[pid].live)
            self.journal.discard(pid)

    # -- FUSE operations ----------------------------------------------------------------
    def init(self, path: str) -> None:
        if self.on_ready:
            self.on_ready()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None and fh in self.fh_node else os.lstat(self._b(path))
        return {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                                             "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blocks")} | {
            "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", ".."] + [os.fsdecode(n) for n in os.listdir(self._b(path))]

    def opendir(self, path: str) -> int:
        return 0

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._b(path), amode):
            raise OSError(errno.EACCES, "")
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._b(path))
        return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                             "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}

    def readlink(self, path: str) -> str:
        return os.fsdecode(os.readlink(self._b(path)))

    def mkdir(self, path: str, mode: int) -> int:
        parent, pid, name = self._parent(path)
        os.mkdir(self._b(path), mode)
        parent.live[name] = self._new(Node("dir"), os.lstat(self._b(path)).st_ino)
        self._named(pid)
        return 0

    def symlink(self, path: str, target: str) -> int:
        parent, pid, name = self._parent(path)
        os.symlink(_bpath(target), self._b(path))
        parent.live[name] = self._new(Node("symlink", target=target), os.lstat(self._b(path)).st_ino)
        self._named(pid)
        return 0

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        parent, pid, name = self._parent(path)
        b = self._b(path)
        existed = os.path.lexists(b)
        if existed:
            return self.open(path, flags | os.O_CREAT)
        fd = os.open(b, self._flags(flags) | os.O_CREAT | os.O_EXCL, mode)
        nid = self._new(Node("file", clean=False), os.fstat(fd).st_ino)
        parent.live[name] = nid
        self._named(pid)
        self.fh_node[fd] = nid
        return fd

    @staticmethod
    def _flags(flags: int) -> int:
        """The backing file is opened read-write (its durable bytes are read back before a
        first write), without O_APPEND (the kernel gives every write its offset)."""
        flags &= ~(os.O_TRUNC | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_ACCMODE)
        return flags | os.O_RDWR

    def open(self, path: str, flags: int) -> int:
        try:
            fd = os.open(self._b(path), self._flags(flags))
        except PermissionError:
            fd = os.open(self._b(path), flags & ~(os.O_TRUNC | os.O_CREAT | os.O_EXCL | os.O_APPEND))
        nid = self.by_ino[os.fstat(fd).st_ino]
        self.fh_node[fd] = nid
        if flags & os.O_TRUNC and os.fstat(fd).st_size:
            self._dirty(nid, fd=fd)
            os.ftruncate(fd, 0)
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._dirty(self.fh_node[fh], fd=fh)
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if path is None:
            raise OSError(errno.ENOENT, "")
        b = self._b(path)
        nid = self._id(path)
        if os.lstat(b).st_size != length:
            self._dirty(nid, b)
        os.truncate(b, length)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        self.fh_node.pop(fh, None)
        os.close(fh)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        nid = self.fh_node[fh]
        self._durable(f"{'fdatasync' if datasync else 'fsync'} {path}")
        os.fsync(fh)
        node = self.nodes[nid]
        node.clean, node.saved = True, None
        if self.mode == "ext4":
            self._commit(self.root_id)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        nid = self._id(path)
        self._durable(f"fsyncdir {path}")
        self._commit(nid)
        return 0

    def unlink(self, path: str) -> int:
        parent, pid, name = self._parent(path)
        self._forget(self._b(path))
        os.unlink(self._b(path))
        parent.live.pop(name, None)
        self._named(pid)
        return 0

    def rmdir(self, path: str) -> int:
        parent, pid, name = self._parent(path)
        b = self._b(path)
        ino = os.lstat(b).st_ino
        os.rmdir(b)
        self.by_ino.pop(ino, None)
        parent.live.pop(name, None)
        self._named(pid)
        return 0

    def rename(self, old: str, new: str) -> int:
        oparent, opid, oname = self._parent(old)
        nparent, npid, nname = self._parent(new)
        src = self._id(old)
        replaced = os.path.lexists(self._b(new))
        if replaced:
            self._forget(self._b(new))
        os.rename(self._b(old), self._b(new))
        oparent.live.pop(oname, None)
        nparent.live[nname] = src
        self._named(opid)
        self._named(npid)
        if replaced and self.mode == "ext4" and self.nodes[src].kind == "file":
            self.nodes[src].clean, self.nodes[src].saved = True, None     # auto_da_alloc
        return 0

    def link(self, path: str, target: str) -> int:
        parent, pid, name = self._parent(path)
        os.link(self._b(target), self._b(path))
        parent.live[name] = self._id(target)
        self._named(pid)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._b(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._b(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._b(path), follow_symlinks=False)
        else:
            os.utime(self._b(path), ns=times, follow_symlinks=False)
        return 0

    # -- the cut --------------------------------------------------------------------------
    def rebuild(self) -> dict[str, int]:
        """Unmounted: make the backing directory what the disk holds durably. Returns
        what the cut discarded: files whose bytes went back, names lost."""
        live_path: dict[int, bytes] = {}
        for dirpath, dirs, files in os.walk(self.root):
            for n in dirs + files:
                p = os.path.join(dirpath, n)
                nid = self.by_ino.get(os.lstat(p).st_ino)
                if nid is not None:
                    live_path.setdefault(nid, p)
        new = self.root + b".cut"
        subprocess.run(["rm", "-rf", new], check=False)
        os.mkdir(new)
        shutil.copystat(self.root, new)
        made: dict[int, bytes] = {}
        lost = {"files rolled back": 0, "names lost": 0}

        def build(nid: int, dest: bytes) -> None:
            node = self.nodes[nid]
            for name, cid in sorted(node.durable.items()):
                child = self.nodes[cid]
                p = os.path.join(dest, _bpath(name))
                if node.live.get(name) != cid:
                    lost["names lost"] += 1
                if cid in made:
                    if child.kind == "dir":
                        continue                     # one directory, one place (the first)
                    os.link(made[cid], p)
                    continue
                if child.kind == "dir":
                    os.mkdir(p)
                    made[cid] = p
                    build(cid, p)
                elif child.kind == "symlink":
                    os.symlink(_bpath(child.target), p)
                elif child.clean and cid in live_path:
                    os.link(live_path[cid], p)
                    made[cid] = p
                else:
                    if child.saved is not None:
                        shutil.copy2(child.saved, p)
                    else:
                        open(p, "wb").close()
                    lost["files rolled back"] += 1
                    made[cid] = p
            for name, cid in node.live.items():
                if name not in node.durable:
                    lost["names lost"] += 1

        build(self.root_id, new)
        subprocess.run(["rm", "-rf", self.root], check=True)
        os.rename(new, self.root)
        self._load()
        return lost

    def reset(self) -> None:
        """Unmounted: an empty filesystem."""
        subprocess.run(["rm", "-rf", self.root], check=True)
        os.mkdir(self.root)
        self._load()


# -- the server process and its client --------------------------------------------------------
FUSECTL = Path("/sys/fs/fuse/connections")


def _fuse_minor(mnt: str) -> str | None:
    """The FUSE connection behind the mount at ``mnt`` (its device minor), from mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if f[4] == mnt and " - fuse" in line:
            minor = f[2].split(":")[1]
    return locals().get("minor")


def _unmount(mnt: str) -> None:
    """Pull the plug: abort the FUSE connection (every request in flight and every later one
    fails; files still open on the mount do not keep it alive), then detach the mount."""
    minor = _fuse_minor(mnt)
    if minor is not None:
        if not os.path.ismount(FUSECTL):
            subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)], capture_output=True)
        try:
            (FUSECTL / minor / "abort").write_text("1")
        except OSError:
            pass                              # no fusectl: the unmount below must do
    subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)


def serve(backing: Path, mnt: Path, mode: str, control: Path | None, name: str) -> None:
    import logging

    import mfusepy

    logging.getLogger("mfusepy").setLevel(logging.CRITICAL)
    backing.mkdir(parents=True, exist_ok=True)
    fs = PowerCutFS(backing, backing.with_name(backing.name + ".shadow"), mode,
                    Control(control) if control else None, name)
    commands: list[str] = []
    unmounted = threading.Event()            # the mount is gone: a new one may take its place

    def ready() -> None:
        print("ready", flush=True)

    def control_loop() -> None:
        for line in sys.stdin:
            commands.append(line.strip())
            fs.cutting.set()                      # held fsyncs fail; nothing more is applied
            _unmount(str(mnt))
            unmounted.set()
        commands.append("stop")
        _unmount(str(mnt))
        unmounted.set()

    fs.on_ready = ready
    threading.Thread(target=control_loop, daemon=True).start()
    while True:
        fs.cutting.clear()
        mfusepy.FUSE(fs, str(mnt), foreground=True, nothreads=True, hard_remove=True,
                     attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname=f"powercut-{name}")
        unmounted.wait(30)                        # the abort ends the loop before the unmount ends
        unmounted.clear()
        cmd = commands.pop(0) if commands else "stop"
        if cmd == "cut":
            lost = fs.rebuild()
            print("lost " + " ".join(f"{k.replace(' ', '_')}={v}" for k, v in lost.items()), flush=True)
        elif cmd.startswith("reset"):
            fs.mode = cmd.split()[1] if " " in cmd else fs.mode
            fs.reset()
        else:
            return


class Instance:
    """A mounted power-cut filesystem (a server process); ``cut`` it, ``reset`` it, ``close`` it."""

    def __init__(self, root: Path, mnt: Path, mode: str, control: Control | None = None,
                 name: str = "fs") -> None:
        self.root, self.mnt, self.mode, self.name = Path(root), Path(mnt), mode, name
        self.mnt.mkdir(parents=True, exist_ok=True)
        repo = Path(__file__).resolve().parents[2]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
        argv = [sys.executable, "-m", "campaigns.fs.powercut", str(self.root / "backing"), str(self.mnt),
                "--mode", mode, "--name", name]
        if control is not None:
            argv += ["--control", str(control.path)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._expect("ready")

    @property
    def backing(self) -> Path:
        return self.root / "backing"

    def _expect(self, word: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(word):
            raise RuntimeError(f"power-cut filesystem {self.name}: expected {word!r}, got {line!r}")
        return line

    def _say(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def cut(self) -> dict[str, int]:
        """The power goes out: what was not durable is gone; mounted again. Nothing may
        hold files open on the mount (kill its users first)."""
        self._say("cut")
        words = self._expect("lost").split()[1:]
        self._expect("ready")
        return {k.replace("_", " "): int(v) for k, v in (w.split("=") for w in words)}

    def reset(self, mode: str | None = None) -> None:
        """An empty filesystem, in ``mode`` (pessimistic, ext4) if given."""
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._say(f"reset {mode}" if mode else "reset")
        self._expect("ready")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _unmount(str(self.mnt))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m campaigns.fs.powercut")
    ap.add_argument("backing", type=Path)
    ap.add_argument("mount", type=Path)
    ap.add_argument("--mode", choices=MODES, default="pessimistic")
    ap.add_argument("--control", type=Path)
    ap.add_argument("--name", default="fs")
    a = ap.parse_args(argv)
    serve(a.backing.resolve(), a.mount.resolve(), a.mode, a.control, a.name)


if __name__ == "__main__":
    main()
