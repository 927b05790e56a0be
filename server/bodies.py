"""Job bodies in append-only segment files beside the database, written once.

A body goes to the end of the current segment (`seg-<n>.dat`, a new one every SEGMENT_BYTES)
and the job's row keeps only where it is. Written this way a body costs one sequential write and
one share of a group fdatasync, instead of a write to SQLite's log plus a copy at the checkpoint,
and a lease reads it back with one pread, usually from the page cache.

Ordering, for durability: the writer thread appends the bodies of a group commit, fdatasyncs the
segments it wrote (when the commit is durable), and only then commits the rows that point at
them, so a committed row never points at bytes a power loss could lose. Bytes appended by an
operation that was then rolled back are garbage nobody points at.

A segment is retired once no unfinished job points into it: the store finds which in the writer
thread, among the segments older than the one being appended to, which no new body can enter,
and makes the finishes that emptied them durable first (so a power loss cannot undo them); see
Store.collect_bodies.

A retired segment is recycled, as PostgreSQL recycles its WAL segments: up to SPARE_SEGMENTS of
them are renamed `spare-<n>.dat` and a later segment is written over one from its start, the
others are deleted. Writing over blocks the file system has already allocated (and whose pages
are likely still cached) costs far less CPU than appending to a new file, where every write
allocates blocks and pages and every fdatasync commits that allocation to the journal (on a disk
mounted with discard, the deleted file's blocks must even be allocated again below it).
A recycled file holds old bytes past what has been written into it this time: garbage that no
row points at, as is anything after a failed write, since the next body is written at the same
offset. Spares are kept only while the file system has SPARES_NEED_FREE_BYTES free besides them:
on a disk filling up, the next retirement (the collector calls one every second) deletes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SEGMENT_BYTES = 256 << 20
SPARE_SEGMENTS = 2  # retired segments kept to be written over: disk held while idle, SEGMENT_BYTES each
SPARES_NEED_FREE_BYTES = 4 * SEGMENT_BYTES  # below this much free space, spares are given back
_NAME = re.compile(r"seg-(\d+)\.dat")
_SPARE = re.compile(r"spare-(\d+)\.dat")


class Bodies:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._lock = threading.Lock()  # guards the read fds and the spares: the loop retires, readers open
        self.current = 0
        self._fd = -1  # append fd of the current segment (writer thread only)
        self._size = 0
        self._new_file = False
        self._unsynced: set[int] = set()  # segments written since the last sync (writer thread only)
        self._readers: dict[int, int] = {}  # read fds by segment
        self._retired: list[int] = []  # read fds of retired segments, closed at the next retirement
        self._spares: list[Path] = []  # retired segments nobody can read any more: to be written over
        self._cooling: list[Path] = []  # retired segments whose read fds are still open: spares next time

    def path(self, segment: int) -> Path:
        return self.dir / f"seg-{segment:08d}.dat"

    def segments(self) -> list[int]:
        return sorted(int(m.group(1)) for e in self.dir.iterdir() if (m := _NAME.fullmatch(e.name)))

    def spares(self) -> list[Path]:
        return sorted(e for e in self.dir.iterdir() if _SPARE.fullmatch(e.name))

    def open(self) -> None:
        """Start appending to a new segment after the newest one there is."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._spares = self.spares()  # left by an earlier run: nobody reads them
        self._start_segment(max(self.segments(), default=0) + 1)

    def _start_segment(self, segment: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self.current = segment
        path = self.path(segment)
        with self._lock:
            spare = self._spares.pop() if self._spares else None
        if spare is not None:
            with contextlib.suppress(OSError):  # then a new file it is
                os.rename(spare, path)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        self._size = 0  # a new segment number: never appended after bytes a crash may have cut short
        self._new_file = True  # its directory entry must reach the disk before a row points into it

    def close(self) -> None:
        with self._lock:
            for fd in [*self._readers.values(), *self._retired]:
                os.close(fd)
            self._readers.clear()
            self._retired.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- the writer thread -----------------------------------------------------------------
    def append(self, body: bytes) -> tuple[int, int]:
        """Write a body after the last one in the current segment; (segment, offset). A write that
        fails halfway (a full disk) leaves garbage that the next body is written over."""
        if self._size >= SEGMENT_BYTES:
            self._start_segment(self.current + 1)
        offset = self._size
        view = memoryview(body)
        written = 0
        while written < len(body):
            written += os.pwrite(self._fd, view[written:], offset + written)
        self._size += len(body)
        self._unsynced.add(self.current)
        return self.current, offset

    def sync(self) -> None:
        """fdatasync every segment written since the last sync (before a durable commit), and the
        directory when a segment was created since, so the file itself survives a power loss."""
        if self._new_file and self._unsynced:
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._new_file = False
        for segment in sorted(self._unsynced):
            if segment == self.current:
                os.fdatasync(self._fd)
            else:
                fd = os.open(self.path(segment), os.O_RDONLY)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        self._unsynced.clear()

    def retire(self, segments: Iterable[int]) -> None:
        """Recycle or delete segments nobody needs (called periodically, with none too). Their read
        fds are closed only at the next call, so a pread that raced with this one still reads from
        the same file, never another fd; and only then may the file be written over. On a disk
        short of room (SPARES_NEED_FREE_BYTES), spares are deleted instead of kept."""
        segments = list(segments)
        room = self._room_for_spares() if segments or self._spares or self._cooling else True
        doomed: list[Path] = []
        with self._lock:
            for fd in self._retired:
                os.close(fd)
            self._retired = [self._readers.pop(s) for s in segments if s in self._readers]
            self._spares += self._cooling
            self._cooling = []
            if not room:
                doomed, self._spares = self._spares, []
            for segment in segments:
                path = self.path(segment)
                if room and len(self._spares) + len(self._cooling) < SPARE_SEGMENTS:
                    spare = self.dir / f"spare-{segment:08d}.dat"
                    with contextlib.suppress(OSError):  # then it is deleted
                        path.rename(spare)
                        self._cooling.append(spare)
                        continue
                doomed.append(path)
        if not room and len(doomed) > len(segments):
            log.warning("disk short of room: %d spare segment(s) deleted", len(doomed) - len(segments))
        for path in doomed:  # outside the lock: deleting a big file can take a while
            path.unlink(missing_ok=True)

    def _room_for_spares(self) -> bool:
        """Whether the file system has room to keep spares (statvfs: no file's times are touched)."""
        try:
            fs = os.statvfs(self.dir)
        except OSError:
            return False
        return fs.f_bavail * fs.f_frsize >= SPARES_NEED_FREE_BYTES

    # -- readers (any thread) --------------------------------------------------------------
    def read(self, segment: int, offset: int, size: int) -> bytes:
        with self._lock:
            fd = self._readers.get(segment)
            if fd is None:
                fd = self._readers[segment] = os.open(self.path(segment), os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"segment {segment} is shorter than the job it holds ({offset}+{size})")
        return data
