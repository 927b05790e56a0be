"""The autoscaling simulation: the policy against the fixed "oldest job > 15 s, add one" rule."""

from __future__ import annotations

import pytest

from server.scaling import simulate
from server.scaling.simulate import CloudParams, burst, bursty, compare


@pytest.mark.parametrize("seed", range(4))
def test_policy_beats_the_fixed_rule_on_a_burst(seed):
    trace = burst(200, over_s=10.0, job_s=1.0)  # 200 worker-s of work arriving within 10 s
    reports = compare(trace, cloud=CloudParams(boot_s=40.0, idle_exit_s=60.0, max_workers=10), seed=seed)
    ours, fixed = reports["policy"], reports["fixed"]
    assert ours.jobs == fixed.jobs == 200
    assert ours.worker_seconds < fixed.worker_seconds
    assert ours.p50_s < fixed.p50_s
    assert ours.p95_s < fixed.p95_s


def test_every_job_completes_and_the_fleet_stays_within_max():
    trace = bursty(seed=3, duration_s=900.0)
    cloud = CloudParams(max_workers=4)
    for report in compare(trace, cloud=cloud, seed=3).values():
        assert report.jobs == len(trace)
        assert report.most_workers <= 4
        assert report.worker_seconds >= sum(j.cost for j in trace) / (cloud.worker_rate * 1.3)


def test_simulation_is_deterministic_and_the_cli_prints_a_table(capsys):
    trace = bursty(seed=5, duration_s=600.0)
    assert compare(trace, seed=5) == compare(trace, seed=5)
    assert simulate.main(["--trace", "burst", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "policy" in out and "fixed" in out and "worker-s" in out
