"""server.bodies: job bodies in append-only segment files, on real files (what the store makes of
them: test_store_bodies.py). Faults (a full disk, a delete racing a read) are injected by wrapping
the os call they happen in."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import bodies as bodies_module
from server.bodies import Bodies


@pytest.fixture(autouse=True)
def room_to_spare(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spares are kept whatever this machine's free space, except where a test says otherwise."""
    monkeypatch.setattr(bodies_module, "SPARES_NEED_FREE_BYTES", 0)


@pytest.fixture
def bodies(tmp_path: Path) -> Iterator[Bodies]:
    opened = Bodies(tmp_path / "bodies")
    opened.open()
    yield opened
    opened.close()


def fd_target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def open_fds_to(path: Path) -> int:
    """How many of this process's fds point at `path` (unlinked or not)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = fd_target(int(name))
        except OSError:  # the fd listdir itself used
            continue
        count += target in (str(path), f"{path} (deleted)")
    return count


def record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files (their paths) fdatasync'd or fsync'd from now on; the calls still happen."""
    synced: list[str] = []
    for name in ("fdatasync", "fsync"):
        real = getattr(os, name)

        def spy(fd: int, real=real) -> None:
            synced.append(fd_target(fd))
            real(fd)

        monkeypatch.setattr(os, name, spy)
    return synced


def test_bodies_of_every_size_read_back_across_segment_rotations(bodies, monkeypatch):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 64 << 10)
    sizes = [0, 1, 8193, 30_000, 40_000, 64 << 10, (64 << 10) + 1, 200_000, 17, 5]
    written = [(bodies.append(body), body) for body in map(os.urandom, sizes)]
    # a body goes whole to the current segment; the next one starts once it holds SEGMENT_BYTES
    assert [where for where, _ in written] == [
        (1, 0), (1, 0), (1, 1), (1, 8194), (1, 38194), (2, 0), (3, 0), (4, 0), (5, 0), (5, 17)
    ]  # fmt: skip
    for where, body in written:
        assert bodies.read(*where, len(body)) == body
    assert bodies.segments() == [1, 2, 3, 4, 5] and bodies.current == 5
    assert [bodies.path(s).stat().st_size for s in bodies.segments()] == [78194, 64 << 10, (64 << 10) + 1, 200_000, 22]


def test_reading_past_the_end_of_a_segment_is_an_error(bodies):
    segment, offset = bodies.append(b"0123456789")
    with pytest.raises(OSError, match="shorter than the job"):
        bodies.read(segment, offset + 5, 10)


def test_sync_fdatasyncs_every_segment_written_since_the_last_sync_and_nothing_else(bodies, monkeypatch):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 1000)
    synced = record_syncs(monkeypatch)
    bodies.sync()
    assert synced == []  # nothing written
    bodies.append(b"a" * 1000)  # fills segment 1 ...
    bodies.append(b"b" * 10)  # ... so this one starts segment 2
    bodies.sync()
    # the directory first (a new segment's entry must survive), then the full one too, by its path
    assert synced == [str(bodies.dir), str(bodies.path(1)), str(bodies.path(2))]
    bodies.sync()
    assert len(synced) == 3
    bodies.append(b"c")
    bodies.sync()
    assert synced[3:] == [str(bodies.path(2))]


def test_a_reopened_directory_reads_the_old_segments_and_appends_to_a_new_one(tmp_path):
    first = Bodies(tmp_path / "bodies")
    first.open()
    old = first.append(b"old body")
    first.close()
    again = Bodies(tmp_path / "bodies")
    again.open()
    try:
        new = again.append(b"new body")
        assert (old, new) == ((1, 0), (2, 0))  # never appended after bytes a crash may have cut short
        assert again.read(*old, 8) == b"old body" and again.read(*new, 8) == b"new body"
        assert again.path(1).stat().st_size == 8
    finally:
        again.close()


@pytest.mark.parametrize("spares", [0, 2], ids=["deleted", "recycled"])
def test_a_read_racing_a_retirement_reads_the_same_file_whose_fd_is_closed_at_the_next_one(bodies, monkeypatch, spares):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 100)
    monkeypatch.setattr(bodies_module, "SPARE_SEGMENTS", spares)
    body = os.urandom(100)
    where = bodies.append(body)  # fills segment 1
    bodies.append(b"x")  # segment 2 is the current one
    assert bodies.read(*where, 100) == body  # segment 1 has a read fd now
    inode = bodies.path(1).stat().st_ino
    real_pread = os.pread

    def retire_first(fd: int, size: int, offset: int) -> bytes:
        """The collector retires the segment between the reader's fd lookup and its pread."""
        monkeypatch.setattr(os, "pread", real_pread)
        bodies.retire([1])
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", retire_first)
    assert bodies.read(*where, 100) == body  # the fd was retired, not closed (nor reused)
    assert not bodies.path(1).exists()
    assert [p.stat().st_ino for p in bodies.spares()] == ([inode] if spares else [])
    now_at = bodies.spares()[0] if spares else bodies.path(1)  # recycled, or unlinked
    assert open_fds_to(now_at) == 1
    bodies.retire([])  # the next retirement closes it
    assert open_fds_to(now_at) == 0
    with pytest.raises(FileNotFoundError):
        bodies.read(*where, 100)  # nobody may point into a retired segment


def test_retired_segments_beyond_spare_segments_are_deleted(bodies, monkeypatch):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 10)
    for _ in range(4):
        bodies.append(b"0123456789")  # segments 1 to 4, full
    bodies.append(b"x")  # segment 5 is the current one
    bodies.retire([1, 2, 3])
    assert bodies.segments() == [4, 5]
    assert [p.name for p in bodies.spares()] == ["spare-00000001.dat", "spare-00000002.dat"]
    bodies.retire([4])  # the spares are full
    assert bodies.segments() == [5] and len(bodies.spares()) == 2


def test_on_a_disk_short_of_room_spares_are_deleted_and_no_more_are_kept(bodies, monkeypatch, caplog):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 10)
    for _ in range(4):
        bodies.append(b"0123456789")  # segments 1 to 4, full
    bodies.append(b"x")  # segment 5 is the current one
    bodies.retire([1, 2])
    assert len(bodies.spares()) == 2
    fs = os.statvfs(bodies.dir)  # the real file system's free space, and a need just above it
    monkeypatch.setattr(bodies_module, "SPARES_NEED_FREE_BYTES", fs.f_bavail * fs.f_frsize + (1 << 30))
    bodies.retire([])  # the collector's call every second, with nothing to retire
    assert bodies.spares() == [] and "2 spare segment(s) deleted" in caplog.text
    bodies.retire([3])
    assert bodies.spares() == [] and bodies.segments() == [4, 5]  # deleted, not kept
    monkeypatch.setattr(bodies_module, "SPARES_NEED_FREE_BYTES", 0)  # room again
    bodies.retire([4])
    assert [p.name for p in bodies.spares()] == ["spare-00000004.dat"]
    bodies.append(b"0123456789")  # fills segment 5
    assert bodies.append(b"y") == (6, 0)  # a new file: the spare still cools


def inode(path: Path) -> int:
    return path.stat().st_ino


def test_a_spare_is_written_over_from_its_start_once_no_read_fd_can_reach_it(bodies, monkeypatch):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 1000)
    old = os.urandom(1000)
    bodies.append(old)  # fills segment 1
    bodies.append(b"a" * 1000)  # segment 2, full
    bodies.sync()  # as the durable commit that finds a segment unused does first
    bodies.retire([1])
    [spare] = bodies.spares()
    recycled = inode(spare)
    bodies.append(b"b")  # starts segment 3 while the spare still cools: a new file
    assert bodies.current == 3 and inode(bodies.path(3)) != recycled
    bodies.append(b"b" * 999)
    bodies.retire([])  # closes the retired fds: the spare may be written over now
    synced = record_syncs(monkeypatch)
    body = os.urandom(300)
    where = bodies.append(body)  # starts segment 4: the spare, renamed
    assert where == (4, 0) and inode(bodies.path(4)) == recycled and bodies.spares() == []
    bodies.sync()
    assert synced[0] == str(bodies.dir)  # the new name is durable before a row points into it
    assert bodies.read(*where, 300) == body
    second = bodies.append(b"second")
    assert second == (4, 300) and bodies.read(*second, 6) == b"second"
    assert bodies.path(4).read_bytes()[306:] == old[306:]  # old bytes past the new ones: nobody points there


def test_spares_left_by_an_earlier_run_are_written_over(tmp_path, monkeypatch):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 10)
    first = Bodies(tmp_path / "bodies")
    first.open()
    first.append(b"0123456789")
    first.append(b"x")
    first.retire([1])
    first.close()
    [spare] = first.spares()
    recycled = inode(spare)
    again = Bodies(tmp_path / "bodies")
    again.open()
    try:
        assert again.current == 3 and inode(again.path(3)) == recycled and again.spares() == []
        where = again.append(b"new body")
        assert again.read(*where, 8) == b"new body"
    finally:
        again.close()


def test_close_closes_every_fd(tmp_path, monkeypatch):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 10)
    opened = Bodies(tmp_path / "bodies")
    opened.open()
    wheres = [opened.append(b"0123456789") for _ in range(3)]
    for where in wheres:
        opened.read(*where, 10)
    opened.retire([1])
    opened.close()
    assert sum(open_fds_to(opened.path(s)) for s in (1, 2, 3, 4)) == 0


def test_a_new_segment_is_durable_once_synced_directory_entry_included(bodies, monkeypatch):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 10)
    synced = record_syncs(monkeypatch)
    bodies.append(b"0123456789")
    bodies.append(b"x")  # creates segment 2
    bodies.sync()
    assert str(bodies.path(2)) in synced and str(bodies.dir) in synced


def test_a_write_that_fails_halfway_does_not_shift_the_bodies_after_it(bodies, monkeypatch):
    real_pwrite = os.pwrite

    def half_then_full(fd: int, data: bytes, offset: int) -> int:
        monkeypatch.setattr(os, "pwrite", disk_full)
        return real_pwrite(fd, data[: len(data) // 2], offset)

    def disk_full(fd: int, data: bytes, offset: int) -> int:
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        bodies.append(b"a" * 1000)
    body = os.urandom(100)
    where = bodies.append(body)  # space was freed
    assert where == (1, 0) and bodies.read(*where, len(body)) == body
