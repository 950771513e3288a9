"""The batch lifecycle's transition table, move by move, and what a refused move leaves."""

import logging

import pytest
from openai.types import Batch

from batch_assets.lifecycle.batches import (
    ENDED,
    TRANSITIONS,
    BatchStatus,
    IllegalTransition,
    Transition,
    fail_batch,
    next_status,
    read_batch,
    register_batch,
    transition,
    update_batch,
)
from resources.layout import BatchPaths
from resources.storage import BatchStorage
from tests.conftest import store_status

# The table, written out move by move: (from, transition) -> to. Anything not here is refused,
# except a move to the status the batch already has, which changes nothing.
ALLOWED = {
    ("validating", "start"): "in_progress",
    ("validating", "finalize"): "finalizing",
    ("in_progress", "finalize"): "finalizing",
    ("finalizing", "complete"): "completed",
    ("finalizing", "expire"): "expired",
    ("validating", "request_cancel"): "cancelling",
    ("in_progress", "request_cancel"): "cancelling",
    ("finalizing", "request_cancel"): "cancelling",
    ("cancelling", "confirm_cancel"): "cancelled",
    ("validating", "fail"): "failed",
    ("in_progress", "fail"): "failed",
    ("finalizing", "fail"): "failed",
    ("cancelling", "fail"): "failed",
}
MOVES = [(status, move) for status in BatchStatus for move in Transition]


@pytest.mark.parametrize(("status", "move"), MOVES, ids=[f"{s}-{m}" for s, m in MOVES])
def test_every_move_of_the_table(status, move):
    target = TRANSITIONS[move][1]
    if (status, move) in ALLOWED:
        assert next_status("batch_x", status, move) == ALLOWED[(status, move)]
    elif status is target:
        assert next_status("batch_x", status, move) is None  # already there: nothing changes
    else:
        with pytest.raises(IllegalTransition, match=f"batch_x is {status}"):
            next_status("batch_x", status, move)


def test_an_ended_batch_never_moves():
    for status in ENDED:
        for move in Transition:
            if TRANSITIONS[move][1] is not status:
                with pytest.raises(IllegalTransition):
                    next_status("batch_x", status, move)


@pytest.fixture
def batch(tmp_path) -> tuple[BatchStorage, str]:
    storage = BatchStorage(root=str(tmp_path))
    storage.write_bytes("inbox/a.jsonl", b'{"custom_id": "a"}\n')
    return storage, register_batch(storage, "inbox/a.jsonl")


@pytest.mark.parametrize(
    ("status", "move"),
    [
        ("completed", Transition.START),  # a late retry of a finished batch
        ("cancelled", Transition.COMPLETE),  # a cancelled batch published as completed
        ("validating", Transition.COMPLETE),
        ("failed", Transition.REQUEST_CANCEL),
        ("expired", Transition.FINALIZE),
    ],
)
def test_a_refused_move_leaves_the_record_byte_identical_and_is_logged(batch, status, move, caplog):
    storage, batch_id = batch
    store_status(storage, batch_id, status)
    key = BatchPaths(batch_id).batch_json
    before = storage.read_bytes(key)
    with caplog.at_level(logging.ERROR), pytest.raises(IllegalTransition) as refused:
        transition(storage, batch_id, move, model="changed")
    assert storage.read_bytes(key) == before
    assert refused.value.batch_id == batch_id
    assert any(batch_id in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)


def test_a_transition_stamps_its_time_and_the_record_stays_an_sdk_batch(batch):
    storage, batch_id = batch
    record = read_batch(storage, batch_id)
    assert record.status is BatchStatus.VALIDATING and record.in_progress_at is None
    for move in (Transition.START, Transition.FINALIZE, Transition.COMPLETE):
        record = transition(storage, batch_id, move)
        Batch.model_validate(read_batch(storage, batch_id).as_dict())
    assert record.status is BatchStatus.COMPLETED
    assert record.in_progress_at and record.finalizing_at and record.completed_at
    assert read_batch(storage, batch_id) == record


def test_a_move_to_the_status_it_has_writes_nothing(batch):
    storage, batch_id = batch
    fail_batch(storage, batch_id, "first", "the first reason")
    key = BatchPaths(batch_id).batch_json
    before = storage.read_bytes(key)
    fail_batch(storage, batch_id, "second", "a later reason")
    assert storage.read_bytes(key) == before
    errors = read_batch(storage, batch_id).errors
    assert errors is not None and errors.data[0].code == "first"


def test_the_status_is_not_a_field_to_set(batch):
    storage, batch_id = batch
    with pytest.raises(TypeError, match="status"):
        update_batch(storage, batch_id, status=BatchStatus.COMPLETED)
    with pytest.raises(TypeError, match="completed_at"):
        update_batch(storage, batch_id, completed_at=1)
    assert update_batch(storage, batch_id, model="m").model == "m"
