"""server.views: what the API shows of a job, and the checks on the same shapes from the peer."""

from __future__ import annotations

import math

import pytest

from server.jobs import JobRecord, State
from server.views import check_finished_item, check_work_status, finished_item, work_status

DIGEST = bytes(range(64))
HEX = DIGEST.hex()


def record(state: State = State.COMPLETED, result: bytes | None = DIGEST, error: str | None = None) -> JobRecord:
    return JobRecord(
        seq=42,
        nonce="abc234",
        iterations=7,
        size=3,
        state=state,
        attempts=1,
        worker="w1",
        enqueued_at=10.0,
        completed_at=12.5 if state.finished else None,
        result=result,
        error=error,
    )


def test_finished_item_of_a_completed_and_a_failed_job():
    assert finished_item("s1", record()) == {
        "work_id": "s1.42.abc234",
        "result": HEX,
        "iterations": 7,
        "completed_at": 12.5,
    }
    failed = finished_item("s1", record(State.FAILED, None, "gave up"))
    assert failed == {
        "work_id": "s1.42.abc234",
        "result": None,
        "iterations": 7,
        "completed_at": 12.5,
        "error": "gave up",
    }


def test_work_status_shapes():
    assert work_status("s1", record()) == {
        "work_id": "s1.42.abc234",
        "status": "completed",
        "iterations": 7,
        "enqueued_at": 10.0,
        "completed_at": 12.5,
        "result": HEX,
        "error": None,
        "attempts": 1,
    }
    queued = work_status("s1", record(State.QUEUED, None))
    assert (queued["status"], queued["result"], queued["completed_at"]) == ("queued", None, None)
    assert work_status("s1", record(State.RUNNING, None))["status"] == "running"
    assert work_status("s1", record(State.FAILED, None, "boom"))["error"] == "boom"


def test_the_checks_accept_what_the_views_produce():
    for rec in (record(), record(State.FAILED, None, "gave up")):
        item = finished_item("s1", rec)
        assert check_finished_item(item, "s1") == item
        assert check_finished_item(item, None) == item  # owner not learned yet: any server's id
        status = work_status("s1", rec)
        assert check_work_status(status, "s1.42.abc234") == status


def test_check_finished_item_keeps_only_the_known_fields():
    item = {**finished_item("s1", record()), "extra": "dropped", "worker": "w1"}
    assert set(check_finished_item(item, "s1")) == {"work_id", "result", "iterations", "completed_at"}


GOOD_ITEM = finished_item("s1", record())


@pytest.mark.parametrize(
    ("value", "owner"),
    [
        ([GOOD_ITEM], "s1"),
        ("s1.42.abc234", "s1"),
        (GOOD_ITEM, "s2"),  # another server's job
        ({**GOOD_ITEM, "work_id": "s1.42.abc234\n"}, "s1"),
        ({**GOOD_ITEM, "work_id": 42}, None),
        ({k: v for k, v in GOOD_ITEM.items() if k != "work_id"}, None),
        ({**GOOD_ITEM, "result": HEX.upper()}, "s1"),
        ({**GOOD_ITEM, "result": HEX[:-1]}, "s1"),
        ({**GOOD_ITEM, "result": HEX[:-1] + "g"}, "s1"),
        ({**GOOD_ITEM, "result": list(DIGEST)}, "s1"),
        ({**GOOD_ITEM, "result": None}, "s1"),  # neither a digest nor an error
        ({**GOOD_ITEM, "result": None, "error": 5}, "s1"),
        ({k: v for k, v in GOOD_ITEM.items() if k != "result"}, "s1"),
        ({k: v for k, v in GOOD_ITEM.items() if k != "iterations"}, "s1"),
        ({**GOOD_ITEM, "iterations": "7"}, "s1"),
        ({**GOOD_ITEM, "iterations": 7.0}, "s1"),
        ({k: v for k, v in GOOD_ITEM.items() if k != "completed_at"}, "s1"),
        ({**GOOD_ITEM, "completed_at": math.nan}, "s1"),
        ({**GOOD_ITEM, "completed_at": math.inf}, "s1"),
        ({**GOOD_ITEM, "completed_at": "12.5"}, "s1"),
        ({**GOOD_ITEM, "completed_at": True}, "s1"),
        ({**GOOD_ITEM, "completed_at": None}, "s1"),
    ],
)
def test_check_finished_item_refuses_malformed_items(value, owner):
    with pytest.raises(ValueError):
        check_finished_item(value, owner)


@pytest.mark.parametrize("iterations", [True, False, -1])
def test_check_finished_item_refuses_boolean_or_negative_iterations(iterations):
    with pytest.raises(ValueError):
        check_finished_item({**GOOD_ITEM, "iterations": iterations}, "s1")


GOOD_STATUS = work_status("s1", record())


@pytest.mark.parametrize(
    "value",
    [
        None,
        [GOOD_STATUS],
        {**GOOD_STATUS, "work_id": "s1.43.abc234"},  # another job's status
        {k: v for k, v in GOOD_STATUS.items() if k != "work_id"},
        {**GOOD_STATUS, "status": "done"},
        {**GOOD_STATUS, "status": None},
        {**GOOD_STATUS, "result": "zz" * 64},
        {**GOOD_STATUS, "result": HEX + "00"},
        {**GOOD_STATUS, "result": 5},
    ],
)
def test_check_work_status_refuses_malformed_answers(value):
    with pytest.raises(ValueError):
        check_work_status(value, "s1.42.abc234")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({**GOOD_STATUS, "completed_at": math.nan}, id="nan-completed_at"),
        pytest.param({**GOOD_STATUS, "completed_at": "12.5"}, id="string-completed_at"),
        pytest.param({**GOOD_STATUS, "enqueued_at": math.inf}, id="inf-enqueued_at"),
        pytest.param({**GOOD_STATUS, "enqueued_at": None}, id="null-enqueued_at"),
        pytest.param({**GOOD_STATUS, "enqueued_at": True}, id="boolean-enqueued_at"),
        pytest.param({**GOOD_STATUS, "iterations": "7"}, id="string-iterations"),
        pytest.param({**GOOD_STATUS, "iterations": True}, id="boolean-iterations"),
        pytest.param({**GOOD_STATUS, "iterations": -7}, id="negative-iterations"),
        pytest.param({**GOOD_STATUS, "attempts": -1.5}, id="fractional-attempts"),
        pytest.param({**GOOD_STATUS, "attempts": None}, id="null-attempts"),
        pytest.param({**GOOD_STATUS, "error": 5}, id="number-error"),
        pytest.param({"work_id": "s1.42.abc234", "status": "queued"}, id="missing-fields"),
    ],
)
def test_check_work_status_refuses_ill_typed_fields(value):
    with pytest.raises(ValueError):
        check_work_status(value, "s1.42.abc234")


def test_check_work_status_keeps_only_the_known_fields_and_allows_what_a_status_may_lack():
    checked = check_work_status({**GOOD_STATUS, "worker": "w1", "body": "secret"}, "s1.42.abc234")
    assert checked == GOOD_STATUS
    queued = work_status("s1", record(State.QUEUED, None))
    del queued["attempts"]  # an older peer may not send it
    assert check_work_status(queued, "s1.42.abc234") == queued
