"""One writer per results file: an exclusive `flock` on a sidecar lock file.

Why a sidecar and not HDF5's own file locking: readers (`inspect`, `watch`,
`load`, `report`) must open a file while its run writes it, which HDF5's locks
forbid, so every HDF5 open uses `locking=False`. The sidecar `.<name>.lock`
sits next to the result file; the writer holds an exclusive lock on it from
before it reads anything for writing until it closes the file, and writes its
pid, host and start time into it so that a refused second writer can say who
holds the file. The kernel drops the lock when the holder dies (even by
`kill -9`), so a lock file left behind is harmless: the next writer takes it.

The lock is taken on the lock file's inode, so a holder removes the file only
while still holding the lock, and a taker checks after locking that the path
still names the inode it locked (otherwise a third process could lock a new
file under the same name while it holds the unlinked one).

File systems: Linux implements `flock` on NFS (v3 with lockd, v4) as a POSIX
lock that the server arbitrates, so it excludes writers on other nodes too;
Lustre does so when mounted with `-o flock` and refuses it (ENOSYS) by
default; `-o localflock`, NFS `nolock` or `local_lock=flock` make the lock
local to one node. Where `flock` fails, `WriterLock.supported` is False and
the caller falls back to the weaker pid check (see `fedmpi.run`).
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from fedmpi.results.errors import ResultsLockedError

# errno values meaning "this file system does not do flock", not "someone holds it".
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTSUP}


def lock_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(f".{p.name}.lock")


def holder_text(info: dict) -> str:
    """'pid 123 on host node1 is still running it (since ...)' from a lock file's content."""
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int):
        return "another process is running it"
    text = f"pid {pid}" + (f" on host {host}" if host else "") + " is still running it"
    return text + (f" (since {info['since']})" if info.get("since") else "")


def read_holder(path: str | os.PathLike) -> dict:
    """What the current holder wrote into the lock file of `path` ({} if nothing readable)."""
    try:
        info = json.loads(lock_path(path).read_text()[:4096] or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def live_holder(path: str | os.PathLike) -> dict | None:
    """What the live writer of `path` wrote into its lock ({} if unreadable), None if none.

    For a reader whose read of a file failed: the file may be mid-write by its run,
    which is worth saying rather than calling it damaged. A shared, non-blocking lock
    probe: it fails exactly while a writer holds the exclusive one.
    """
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(path)
    except OSError:
        return None  # no flock here: nothing to tell
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return None


class WriterLock:
    """The exclusive right to write one results file, for as long as it is held.

    `acquire()` raises `ResultsLockedError` when another process holds it; on a
    file system without `flock` it returns a lock with `supported` False (and
    `reason` saying why) that excludes nobody.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_file = lock_path(path)
        self.supported = True
        self.reason = ""
        self._fd: int | None = None

    @classmethod
    def acquire(cls, path: str | os.PathLike) -> WriterLock:
        lock = cls(path)
        lock._take()
        return lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _take(self) -> None:
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # retried only when a holder removed the file under us
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = read_holder(self.path)
                raise ResultsLockedError(
                    f"{self.path} is being written by another run: {holder_text(holder)} "
                    f"and holds {self.lock_file.name}; wait for it or stop it first",
                    holder=holder,
                ) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno not in _UNSUPPORTED:
                    raise
                self.supported = False
                self.reason = f"flock on {self.lock_file.parent}: {exc.strerror or exc}"
                return
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                self._write_holder()
                return
            os.close(fd)  # locked a file its holder had just removed: take the new one
        raise ResultsLockedError(f"{self.path}: could not take {self.lock_file.name} "
                                 "(it keeps being replaced)")

    def _write_holder(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        data = json.dumps(info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Remove the lock file (still holding it, see the module doc) and unlock."""
        if self._fd is None:
            return
        try:
            self.lock_file.unlink(missing_ok=True)
        except OSError:
            pass  # e.g. the directory became read-only: the stale file is harmless
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
