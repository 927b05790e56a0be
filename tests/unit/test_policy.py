"""The scaling policy: projected need from the measured worker rate and boot time."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from common.cost import job_cost
from server.scaling.policy import Observation, PolicyParams, left_when_booted, to_launch, workers_wanted

RATE = 5e6
PARAMS = PolicyParams(scale_up_wait_s=2.0, target_drain_s=30.0)


def obs(work_s: float = 0.0, queued: int | None = None, **kw) -> Observation:
    values = dict(
        queued=1000 if queued is None else queued,
        backlog_cost=int(work_s * RATE),
        oldest_wait_s=0.0,
        live=0,
        starting=0,
        allowed=10,
        min_workers=0,
        worker_rate=RATE,
        boot_s=40.0,
    )
    values.update(kw)
    return Observation(**values)


def test_job_cost_counts_iterations_blocks_and_overhead():
    assert job_cost(1, 0) == 1 + 1000
    assert job_cost(10, 129) == 10 + 2 + 1000


def test_no_worker_and_queued_work_launches_at_once():
    assert to_launch(obs(0.001, queued=1, boot_s=0.0), PARAMS) == 1
    assert to_launch(obs(0.001, queued=1, boot_s=40.0), PARAMS) == 1


def test_backlog_sizes_the_fleet_to_drain_within_the_target_after_boot():
    assert to_launch(obs(200.0), PARAMS) == 7  # ceil(200 / 30)
    assert to_launch(obs(1000.0), PARAMS) == 10  # capped by allowed ...
    assert workers_wanted(obs(1000.0), PARAMS) == 34  # ... the wish sizes loans


def test_live_workers_that_clear_the_backlog_before_a_boot_get_no_help():
    # 2 live workers do 80 worker-s during a 40 s boot: a 70 s backlog is theirs alone,
    # however long the oldest job has waited
    assert to_launch(obs(70.0, live=2, oldest_wait_s=20.0), PARAMS) == 0
    # a fast-booting (local) launcher: the same backlog is worth more workers
    assert to_launch(obs(70.0, live=2, boot_s=0.5), PARAMS) == 1


def test_pending_launches_count_against_demand():
    first = to_launch(obs(200.0), PARAMS)
    assert to_launch(obs(200.0, starting=first), PARAMS) == 0
    assert to_launch(obs(200.0, starting=3), PARAMS) == 2  # 200 - 3*20 = 140 s left -> 5 workers


def test_a_waiting_job_adds_a_worker_only_when_nobody_is_on_the_way():
    tiny = dict(queued=5, live=1, boot_s=0.5)
    assert to_launch(obs(1.0, oldest_wait_s=1.0, **tiny), PARAMS) == 0
    assert to_launch(obs(1.0, oldest_wait_s=2.5, **tiny), PARAMS) == 1
    assert to_launch(obs(1.0, oldest_wait_s=2.5, starting=1, **tiny), PARAMS) == 0


def test_never_more_workers_than_queued_jobs_and_min_workers_kept():
    assert to_launch(obs(600.0, queued=3), PARAMS) == 3
    assert workers_wanted(obs(0.0, queued=0, min_workers=2), PARAMS) == 2
    assert to_launch(obs(0.0, queued=0, min_workers=2), PARAMS) == 2
    assert to_launch(obs(0.0, queued=0, live=3), PARAMS) == 0


@given(
    st.builds(
        Observation,
        queued=st.integers(0, 10_000),
        backlog_cost=st.integers(0, 10**13),
        oldest_wait_s=st.floats(0, 1e4),
        live=st.integers(0, 50),
        starting=st.integers(0, 50),
        allowed=st.integers(0, 50),
        min_workers=st.integers(0, 5),
        worker_rate=st.floats(0, 1e9),
        boot_s=st.floats(0, 600),
    )
)
def test_launches_are_bounded(o):
    n = to_launch(o, PARAMS)
    assert 0 <= n <= max(0, o.allowed - o.live - o.starting)
    if o.queued == 0:
        assert n <= max(0, o.min_workers - o.live - o.starting)
    else:
        assert n <= o.queued or n <= o.min_workers


@given(st.floats(0, 5000), st.integers(0, 20), st.integers(0, 20), st.floats(0, 300))
def test_more_backlog_never_means_fewer_workers(work_s, live, starting, boot_s):
    a = obs(work_s, live=live, starting=starting, boot_s=boot_s, allowed=1000)
    b = dataclasses.replace(a, backlog_cost=a.backlog_cost + int(RATE))
    assert workers_wanted(b, PARAMS) >= workers_wanted(a, PARAMS)
    assert left_when_booted(b) > left_when_booted(a)
