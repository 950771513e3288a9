"""A batch's terminal event (OpenAI's ``batch.completed``, ...) and the state of its delivery.

The lifecycle writes the event into the storage's outbox of events when a batch ends
(:func:`batch_assets.lifecycle.batches.transition`), just before the record that says so, so
the event survives anything that happens after the publish; the webhook sensor delivers it
(:mod:`sensors.webhooks`). The event's id is derived from the batch and the event type, so a
publish that is retried writes the same event again, never a second one; an event whose
batch never reached its status (the publish failed after writing it) is superseded, not sent.
"""

import hashlib
from collections.abc import Iterator
from enum import StrEnum

import msgspec

from resources.layout import PENDING_EVENTS, pending_event_key, sent_event_key
from resources.storage import BatchStorage

EVENT_PREFIX = "batch."  # OpenAI's batch event types: batch.<the status the batch ended in>


class EventData(msgspec.Struct):
    id: str  # the batch's id


class BatchEvent(msgspec.Struct):
    """OpenAI's webhook event body (``openai.types.webhooks.BatchCompletedWebhookEvent``...)."""

    id: str
    type: str
    created_at: int
    data: EventData
    object: str = "event"

    @property
    def batch_status(self) -> str:
        """The status the batch ended in: what the event announces."""
        return self.type.removeprefix(EVENT_PREFIX)


class DeliveryState(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    DELIVERED = "delivered"  # the endpoint answered 2xx
    GAVE_UP = "gave_up"  # no 2xx within the retry period
    NO_ENDPOINT = "no_endpoint"  # the project has no webhook URL: kept, not sent
    SUPERSEDED = "superseded"  # its batch ended otherwise (the publish that wrote it failed)


class Delivery(msgspec.Struct):
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0
    delivered_at: int | None = None
    last_error: str | None = None


class EventRecord(msgspec.Struct):
    """``events/{pending,sent}/<event_id>.json``: the event as sent, and how its delivery went."""

    event: BatchEvent
    delivery: Delivery = msgspec.field(default_factory=Delivery)

    def body(self) -> bytes:
        """The exact bytes sent (and signed): the same on every attempt."""
        return msgspec.json.encode(self.event)


def event_id(batch_id: str, event_type: str) -> str:
    digest = hashlib.sha256(f"{batch_id}\n{event_type}".encode()).hexdigest()
    return f"evt_{digest[:32]}"


def record_event(storage: BatchStorage, batch_id: str, status: str, created_at: int) -> str:
    """Write the pending event of a batch that ends in ``status`` (once); returns its id."""
    event_type = f"{EVENT_PREFIX}{status}"
    eid = event_id(batch_id, event_type)
    if find_event(storage, eid) is None:
        event = BatchEvent(eid, event_type, created_at, EventData(batch_id))
        storage.write_bytes(pending_event_key(eid), msgspec.json.encode(EventRecord(event)))
    return eid


def find_event(storage: BatchStorage, eid: str) -> EventRecord | None:
    """The event with id ``eid``, pending or sent."""
    for key in (pending_event_key(eid), sent_event_key(eid)):
        raw = storage.read_optional(key)
        if raw is not None:
            return msgspec.json.decode(raw, type=EventRecord)
    return None


def batch_event(storage: BatchStorage, batch_id: str, status: str) -> EventRecord | None:
    """The event of a batch that ended in ``status``, if one was written."""
    return find_event(storage, event_id(batch_id, f"{EVENT_PREFIX}{status}"))


def pending_events(storage: BatchStorage) -> Iterator[EventRecord]:
    """The events waiting for delivery, oldest key first."""
    for info in storage.list(PENDING_EVENTS):
        raw = storage.read_optional(info.key)
        if raw is not None:
            yield msgspec.json.decode(raw, type=EventRecord)


def save_delivery(storage: BatchStorage, record: EventRecord) -> None:
    """Store the delivery state; an event that is done moves from pending to sent."""
    eid = record.event.id
    raw = msgspec.json.encode(record)
    if record.delivery.state is DeliveryState.PENDING:
        storage.write_bytes(pending_event_key(eid), raw)
    else:
        storage.write_bytes(sent_event_key(eid), raw)
        storage.delete(pending_event_key(eid))
