"""native.chain / native.chain_many against known answers and hashlib, every backend in turn.

Each test runs once per backend (scalar, avx2, avx512), skipped where this CPU lacks it; the
`DYNWORK_HASH_BACKEND` variable itself is tested in subprocesses at the end.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_support import PADDING_BOUNDARIES, load_vectors, reference

import native

VECTORS = load_vectors()


@pytest.fixture(autouse=True, params=native.BACKENDS)
def backend(request):
    name = request.param
    if name not in native.available_backends():
        pytest.skip(f"this CPU has no {name}")
    before = native.backend()
    native.use_backend(name)
    yield name
    native.use_backend(before)


def random_body(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)


body_lengths = st.one_of(
    st.sampled_from(PADDING_BOUNDARIES),
    st.integers(0, 2048),
    st.integers(0, 300 * 1024),
)


@pytest.mark.parametrize("body,iterations,expected", VECTORS, ids=lambda v: None)
def test_chain_known_answers(body, iterations, expected):
    assert native.chain(body, iterations) == expected


def test_chain_many_known_answers():
    jobs = [(body, iterations) for body, iterations, _ in VECTORS]
    assert native.chain_many(jobs) == [expected for *_, expected in VECTORS]


@pytest.mark.parametrize("length", PADDING_BOUNDARIES)
def test_every_padding_boundary(length):
    body = random_body(length, length)
    jobs = [(body, n) for n in (1, 2, 3)]
    assert native.chain_many(jobs) == [reference(body, n) for n in (1, 2, 3)]
    assert native.chain(body, 2) == reference(body, 2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=body_lengths, seed=st.integers(0, 2**32), iterations=st.integers(1, 5000))
def test_chain_matches_hashlib(length, seed, iterations):
    body = random_body(length, seed)
    assert native.chain(body, iterations) == reference(body, iterations)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(PADDING_BOUNDARIES), st.integers(0, 4096), st.integers(0, 300 * 1024)),
            st.integers(0, 2**32),
            st.one_of(st.integers(1, 20), st.integers(1, 5000)),
        ),
        min_size=1,
        max_size=100,
    )
)
def test_chain_many_matches_hashlib(jobs):
    """Mixed sizes and iteration counts: lanes retire at different times and are refilled."""
    pairs = [(random_body(length, seed), iterations) for length, seed, iterations in jobs]
    assert native.chain_many(pairs) == [reference(b, n) for b, n in pairs]


def test_bytes_like_inputs():
    body = b"dynwork \x00\xff" * 20
    expected = reference(body, 7)
    assert native.chain(bytearray(body), 7) == expected
    assert native.chain(memoryview(body), 7) == expected
    assert native.chain_many([(memoryview(body), 7), (bytearray(body), 7)]) == [expected, expected]


def test_chain_many_empty_and_result_types():
    assert native.chain_many([]) == []
    (out,) = native.chain_many([(b"", 1)])
    assert type(out) is bytes and len(out) == 64
    assert type(native.chain(b"", 1)) is bytes


@pytest.mark.parametrize("iterations", [0, -1, 2**64])
def test_bad_iteration_values(iterations):
    with pytest.raises(ValueError):
        native.chain(b"x", iterations)
    with pytest.raises(ValueError):
        native.chain_many([(b"x", 1), (b"x", iterations)])


@pytest.mark.parametrize("iterations", [1.0, "3", None, True])
def test_bad_iteration_types(iterations):
    with pytest.raises(TypeError):
        native.chain(b"x", iterations)
    with pytest.raises(TypeError):
        native.chain_many([(b"x", iterations)])


@pytest.mark.parametrize("data", ["text", None, 3, [1, 2]])
def test_bad_data_types(data):
    with pytest.raises(TypeError):
        native.chain(data, 1)
    with pytest.raises(TypeError):
        native.chain_many([(data, 1)])


@pytest.mark.parametrize("job", [b"x", (b"x",), (b"x", 1, 2), None])
def test_bad_job_shapes(job):
    with pytest.raises(TypeError):
        native.chain_many([job])


def test_the_expected_build_is_under_test():
    """native/sanitize.sh runs these tests against its instrumented build; make sure they do."""
    expected = os.environ.get("DYNWORK_NATIVE_EXPECT_DIR")
    if expected:
        assert os.path.dirname(native.__file__) == expected


def test_backend_reporting(backend):
    assert native.backend() == backend
    assert "scalar" in native.available_backends()
    assert native.lanes() == {"scalar": 1, "avx2": 4, "avx512": 16}[backend]


def test_more_jobs_than_lanes_retiring_at_different_steps():
    """Lanes are refilled as they finish; long bodies and long chains mix with short ones."""
    jobs = []
    for i in range(3 * native.lanes() + 5):
        length = [0, 64, 127, 128, 20_000, 300 * 1024][i % 6]
        iterations = [1, 2, 1000, 37, 1, 4999][(i * 5) % 6]
        jobs.append((random_body(length, i), iterations))
    assert native.chain_many(jobs) == [reference(b, n) for b, n in jobs]


@pytest.mark.parametrize("tail", range(1, 10))
def test_the_last_chains_of_a_batch_finish_right_on_a_narrower_kernel(tail):
    """With no job left and `tail` chains still running (AVX-512 hands 2..8 of them to one group
    of 8 lanes, a last one to scalar), each carries its state and remaining steps across."""
    jobs = [(random_body(100 + i, i), 40) for i in range(native.lanes())]
    jobs += [(random_body(i, 1000 + i), 500 + 97 * i) for i in range(tail)]  # outlive the rest, unevenly
    assert native.chain_many(jobs) == [reference(b, n) for b, n in jobs]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 8, 9, 15, 16, 17, 20, 24])
def test_bodies_still_arriving_when_the_jobs_run_out_finish_right_on_fewer_lanes(count):
    """When no job is left to refill a lane, the busy lanes move to a narrower kernel or to scalar
    in whichever phase they are: mid-body (full blocks, or only the padded tail left) or chaining.
    Bodies of unequal length leave lanes at every point of their bodies when that happens."""
    lengths = [300 * 1024, 111, 70_000, 128 * 40 + 112, 5_000, 128 * 9, 250_000, 0, 40_000 + 127]
    jobs = [(random_body(lengths[i % len(lengths)] + i, 77 + i), [1, 3, 600][i % 3]) for i in range(count)]
    assert native.chain_many(jobs) == [reference(b, n) for b, n in jobs]


@pytest.mark.parametrize("bodies", [4, 8])
def test_a_chain_heavy_batch_whose_last_bodies_outlive_its_chains_finishes_them_mid_body(bodies):
    """Mostly chain steps: AVX-512 leads with 16 lanes. Longest first, the nine 2,000-step chains
    start with seven 128 KB bodies; the last bodies take the lanes those free and are mid-body when
    the chains end, so they move on (to 8 lanes, or to scalar) from the middle of their bodies."""
    jobs = [(random_body(64, i), 2000) for i in range(9)]
    jobs += [(random_body(128 * 1024 + i, 500 + i), 1) for i in range(7 + bodies)]
    assert native.chain_many(jobs) == [reference(b, n) for b, n in jobs]


@pytest.mark.parametrize("count", [9, 12, 16, 17, 33])
def test_unequal_bodies_go_to_the_lanes_longest_first_and_come_back_in_order(count):
    """Mostly body blocks (AVX-512 leads with one group of 8 lanes): the driver hands the jobs
    out longest first, not as given, and each digest still lands at its own job's place."""
    rng = random.Random(count)
    jobs = [(random_body(rng.randrange(16 * 1024, 256 * 1024), i), rng.choice([1, 2, 50])) for i in range(count)]
    jobs[count // 2] = (random_body(0, 1), 1)  # shortest of all, in the middle
    assert native.chain_many(jobs) == [reference(b, n) for b, n in jobs]


@pytest.mark.parametrize("kind", ["vectors", "unequal bodies", "chains"])
def test_a_feed_hashes_the_jobs_pushed_before_its_run_and_answers_them_in_push_order(kind):
    """As chain_many does: unequal bodies go to the lanes longest first, and a chain-heavy batch
    whose last chains fit in fewer lanes finishes them there."""
    rng = random.Random(kind)
    if kind == "vectors":
        jobs = [(body, iterations) for body, iterations, _ in VECTORS][:20]
        jobs += [(random_body(length, length), 1 + length % 3) for length in PADDING_BOUNDARIES[:12]]
    elif kind == "unequal bodies":
        jobs = [(random_body(rng.randrange(16 * 1024, 256 * 1024), i), rng.choice([1, 2, 50])) for i in range(21)]
    else:
        jobs = [(random_body(64, i), rng.randrange(100, 3000)) for i in range(native.lanes() + 5)]
    feed = native.Feed(64)
    assert [feed.push(body, iterations) for body, iterations in jobs] == list(range(len(jobs)))
    assert feed.run() == [reference(b, n) for b, n in jobs]


def _cut(body: bytes, ends: list[int]) -> list[bytes]:
    return [body[a:b] for a, b in zip([0, *ends], [*ends, len(body)], strict=True)]


def test_a_feed_hashes_a_body_in_pieces_as_their_concatenation():
    """A body pushed as the pieces it arrived in: the lanes read each piece's full blocks in
    place and gather a block that spans pieces, or the tail. Cuts at every offset within a block,
    empty and one-byte pieces, many of them, and more jobs than lanes, so bodies in pieces go
    through the lanes, the narrower kernel and the scalar one, beside whole bodies."""
    rng = random.Random(7)
    jobs: list[tuple[list[bytes] | bytes, bytes, int]] = []
    for offset in range(0, 129, 3):
        body = random_body(128 * 5 + offset, offset)
        jobs.append((_cut(body, [128 + offset, 128 * 3 + 1]), body, 1 + offset % 2))
    for length in (0, 1, 111, 112, 127, 128, 129, 240, 256, 1000, 70_000):
        body = random_body(length, length)
        ends = sorted(rng.randrange(0, length + 1) for _ in range(rng.randrange(1, 6)))
        jobs.append((_cut(body, ends), body, rng.choice([1, 2, 40])))
    jobs.append(([b"", b"", b""], b"", 1))
    jobs.append(([], b"", 2))
    tiny = random_body(300, 300)
    jobs.append((_cut(tiny, list(range(1, 300))), tiny, 1))  # 300 one-byte pieces
    jobs.append((random_body(5_000, 5), random_body(5_000, 5), 3))  # a whole body beside them
    feed = native.Feed(len(jobs))
    assert [feed.push(data, n) for data, _, n in jobs] == list(range(len(jobs)))
    assert feed.run() == [reference(body, n) for _, body, n in jobs]
    for data, body, n in jobs[::7]:  # alone, a lone body finishes in scalar
        one = native.Feed(1)
        one.push(data, n)
        assert one.run() == [reference(body, n)]


def test_a_feed_refuses_a_job_past_its_capacity_and_any_after_its_run():
    feed = native.Feed(2)
    assert feed.push(b"a", 1) == 0
    assert feed.push(bytearray(b"b"), 3) == 1
    assert feed.push(b"c", 1) is None  # full
    assert feed.run() == [reference(b"a", 1), reference(b"b", 3)]
    assert native.Feed(5).run() == []  # nothing pushed: closed at once
    closed = native.Feed(5)
    closed.run()
    assert closed.push(b"late", 1) is None
    with pytest.raises(ValueError):
        native.Feed(0)
    with pytest.raises(ValueError):
        feed.push(b"x", 0)  # checked before anything is pushed


@pytest.mark.parametrize("lead", ["a lone long body", "chains"])
def test_jobs_pushed_while_a_feed_runs_join_it_and_every_digest_is_right(lead):
    """One thread runs the feed while this one pushes; each push lands before the run closes the
    feed (and is hashed: in a free lane, on a narrower kernel that took over the last jobs, or
    bringing a lone job from scalar back to the lanes mid-body) or after it (refused). Which,
    depends on timing; every accepted job's digest must be right either way. Each job's expected
    digest is computed (in Python) before it is pushed, which spreads the pushes over the run."""
    lengths = [0, 111, 112, 5_000, 128 * 40 + 112, 70_000, 250_000]
    for trial in range(12):
        feed = native.Feed(48)
        if lead == "chains":  # chain-heavy: 16 AVX-512 lanes, then the last ones on 8, then 4
            jobs = [(random_body(64, 50 + i), 200 + 150 * i) for i in range(native.lanes() + 2)]
        else:
            jobs = [(random_body(300 * 1024 + trial, trial), 1 + trial % 2)]
        for job in jobs:
            feed.push(*job)
        digests: list[list[bytes]] = []
        runner = threading.Thread(target=lambda f=feed, out=digests: out.append(f.run()))
        runner.start()
        expected = [reference(b, n) for b, n in jobs]
        seen: list[tuple[int, bytes]] = []
        for i in range(24):
            body = random_body(lengths[(i + trial) % len(lengths)] + i, 1000 * trial + i)
            iterations = [1, 2, 300][i % 3]
            expected.append(reference(body, iterations))
            if feed.push(body, iterations) is None:
                expected.pop()
                break
            seen += feed.finished(len(seen))  # published while the run goes on: never twice, never wrong
        runner.join(60)
        assert digests == [expected], f"trial {trial}: {len(expected)} jobs"
        seen += feed.finished(len(seen))
        assert sorted(j for j, _ in seen) == list(range(len(expected)))
        assert all(digest == expected[j] for j, digest in seen)


@contextlib.contextmanager
def running(feed: native.Feed) -> Iterator[tuple[int, list[list[bytes]]]]:
    """Runs the feed in a thread that writes to an eventfd as jobs are done: yields the eventfd
    and the list the run's digests go to; the thread is joined before the eventfd is closed."""
    wake = os.eventfd(0, os.EFD_NONBLOCK)
    digests: list[list[bytes]] = []
    try:
        feed.notify(wake)
        runner = threading.Thread(target=lambda: digests.append(feed.run()))
        runner.start()
        try:
            yield wake, digests
        finally:
            runner.join(60)
    finally:
        os.close(wake)


def test_a_burst_pushed_into_a_feed_run_on_a_narrower_kernel_is_hashed_on_the_wider_one_again():
    """Two long chains and a tiny job: the run moves them to its narrowest kernel at once (4 lanes
    on AVX-512VL). Once the tiny job is published, the run is there; a burst then fills its free
    lanes, and the rest waits for lanes until the run moves the lanes back to the wider kernel.
    Every digest must be right, on every backend, whichever way the run took."""
    chains = [(random_body(64, 90 + i), 150_000 + 10_000 * i) for i in range(2)]
    burst = [(random_body(5_000 + 999 * i, 120 + i), 1 + 150 * (i % 3)) for i in range(3 * native.lanes())]
    expected = [reference(b, n) for b, n in [(b"", 1), *chains, *burst]]
    feed = native.Feed(len(expected))
    for job in [(b"", 1), *chains]:  # the tiny one first: some backends take a feed's jobs in push order
        feed.push(*job)
    with running(feed) as (wake, digests):
        readable, _, _ = select.select([wake], [], [], 60)
        assert readable and [j for j, _ in feed.finished()] == [0]  # the tiny job first: the chains still run
        assert all(feed.push(*job) is not None for job in burst)
    assert digests == [expected]


def test_a_feed_publishes_each_job_as_it_is_done_and_wakes_the_pushing_thread():
    """Three short bodies beside a long chain (about half a second): their digests are published,
    and the eventfd written, while the chain still runs; the rest comes by the end, each job once,
    in the order they were done, with the digests that `run` returns."""
    jobs = [(random_body(5_000 * (i + 1), i), 1 + i) for i in range(3)] + [(b"long", 1_500_000)]
    feed = native.Feed(8)
    for job in jobs:  # short ones first: the scalar backend takes a feed's jobs in push order
        feed.push(*job)
    with running(feed) as (wake, digests):
        readable, _, _ = select.select([wake], [], [], 60)
        assert readable and os.eventfd_read(wake) >= 1
        first = feed.finished()
    expected = [reference(b, n) for b, n in jobs]
    assert first and {j for j, _ in first} <= {0, 1, 2}, "the long chain was done before any short job was seen"
    assert all(digest == expected[j] for j, digest in first)
    rest = feed.finished(len(first))
    assert sorted(j for j, _ in first + rest) == [0, 1, 2, 3] and rest[-1][0] == 3
    assert all(digest == expected[j] for j, digest in rest)
    assert digests == [expected] and feed.finished() == first + rest


def test_a_job_pushed_while_long_chains_run_is_done_before_them(backend):
    """Once a tiny job is done, two long chains have the lanes; a job pushed then takes a free
    lane within a slice of steps, and is published long before the chains (not after them)."""
    if native.lanes() == 1:
        pytest.skip("one lane: a pushed job waits for the job in it")
    chains = [(b"long", 3_000_000), (b"longer", 3_100_000)]
    feed = native.Feed(8)
    feed.push(b"tiny", 2)  # first: some backends take a feed's jobs in push order
    for job in chains:
        feed.push(*job)
    with running(feed) as (wake, _):
        assert select.select([wake], [], [], 60)[0] and os.eventfd_read(wake) >= 1
        assert [j for j, _ in feed.finished()] == [0]  # the chains have the lanes to themselves now
        late = (random_body(3_000, 7), 1_000)
        assert feed.push(*late) == 3
        assert select.select([wake], [], [], 60)[0] and os.eventfd_read(wake) >= 1
        second = feed.finished(1)
    assert [j for j, _ in second][:1] == [3], "the pushed job waited for the long chains"
    assert second[0][1] == reference(*late)
    done = feed.finished()
    assert [j for j, _ in done] == [0, 3, 1, 2]
    assert [digest for _, digest in done[2:]] == [reference(*job) for job in chains]


def _import_with_env(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DYNWORK_HASH_BACKEND=value)
    code = "import native; print(native.backend(), native.lanes())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_env_var_forces_backend(backend):
    proc = _import_with_env(backend.upper())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == backend


@pytest.mark.parametrize("value", ["avx512", "sse9", "gpu"])
def test_env_var_unavailable_backend_fails_loudly(backend, value):
    if backend != "scalar":
        pytest.skip("independent of the selected backend")
    if value in native.available_backends():
        pytest.skip(f"this CPU has {value}")
    proc = _import_with_env(value)
    assert proc.returncode != 0
    assert "DYNWORK_HASH_BACKEND" in proc.stderr and value in proc.stderr


@pytest.mark.parametrize("call", ["chain", "chain_many", "feed"])
def test_gil_released_during_c_call(call):
    """Another Python thread keeps running while a long chain is in C.

    If the call held the GIL, no tick could land in the middle of it: the other thread could only
    run in the few milliseconds before the call enters C. Ticks in the middle half prove overlap.
    """
    iterations = 1_500_000
    window: list[float] = []
    ticks: list[float] = []
    done = threading.Event()

    def hash_long():
        window.append(time.monotonic())
        if call == "chain":
            native.chain(b"gil", iterations)
        elif call == "chain_many":
            native.chain_many([(b"gil", iterations)])
        else:
            feed = native.Feed(1)
            feed.push(b"gil", iterations)
            feed.run()
        window.append(time.monotonic())
        done.set()

    def tick():
        while not done.is_set():
            ticks.append(time.monotonic())

    ticker = threading.Thread(target=tick)
    ticker.start()
    hasher = threading.Thread(target=hash_long)
    hasher.start()
    hasher.join()
    ticker.join()
    start, end = window
    quarter = (end - start) / 4
    middle = [t for t in ticks if start + quarter < t < end - quarter]
    assert middle, f"no Python progress during a {end - start:.3f}s C call"
