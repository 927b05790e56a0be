"""server.health: problems named while they last, on the monotonic clock; detail only for the operator."""

from __future__ import annotations

from server.health import Health
from tests.unit.support import FakeClock


def test_a_problem_is_shown_until_it_recovers_and_keeps_its_start():
    clock = FakeClock()
    health = Health(clock)
    assert not health.degraded and health.problems() == {}
    health.failing("lease sweep", "StoreError", "database or disk is full")
    clock.advance(4.0)
    clock.step_wall(-3600)  # a wall step does not change how long it has lasted
    health.failing("lease sweep", "StoreError", "still full")  # again: same problem, same start
    assert health.degraded
    assert health.problems() == {"lease sweep": {"error": "StoreError", "for_s": 4.0}}
    assert health.problems(detail=True)["lease sweep"]["detail"] == "still full"
    health.recovered("lease sweep")
    health.recovered("never failed")
    assert not health.degraded


def test_several_problems_and_bounded_text():
    health = Health(FakeClock())
    health.failing("autoscaler", "ClientError" * 50, "arn:aws:iam::123456789012:role/x " * 100)
    health.failing("peer sync", "Unavailable")
    problems = health.problems(detail=True)
    assert set(problems) == {"autoscaler", "peer sync"}
    assert len(problems["autoscaler"]["error"]) == 200 and len(problems["autoscaler"]["detail"]) == 1000
    assert "arn:aws" not in str(health.problems())  # the public view has no raw error text
