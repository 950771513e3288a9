"""Delivers each batch's terminal event to its project's webhook, at least once.

The event was written to the storage by the transition that ended the batch
(:mod:`batch_assets.lifecycle.events`), so a restart of ``dagster dev``, or of the whole
deployment, loses none: this sensor finds it pending and sends it. A non-2xx answer, a
timeout or a refused connection is retried with exponential back-off (5 s, 10 s, ... at most
an hour apart) until ``retry_hours`` after the event, always with the same ``webhook-id``.
"""

import logging
import time

import dagster as dg
import msgspec

from batch_assets.lifecycle.batches import batch_exists, read_batch
from batch_assets.lifecycle.events import (
    Delivery,
    DeliveryState,
    EventRecord,
    pending_events,
    save_delivery,
)
from resources.storage import BatchStorage
from resources.webhooks import WebhookSender, backoff_s

TICK_BUDGET_S = 30.0  # no new attempt starts after this much of a tick (sensors time out at 60)
logger = logging.getLogger(__name__)


def _next_delivery(
    record: EventRecord, project: str | None, sender: WebhookSender, now: float
) -> Delivery:
    """One attempt at ``record``'s event, and its delivery state after it."""
    delivery = record.delivery
    attempt = sender.deliver(project, record.event.id, record.body())
    attempts = delivery.attempts + 1
    if attempt.ok:
        return Delivery(DeliveryState.DELIVERED, attempts, 0.0, int(now), delivery.last_error)
    if now - record.event.created_at >= sender.retry_hours * 3600:
        return Delivery(DeliveryState.GAVE_UP, attempts, 0.0, None, attempt.error)
    return Delivery(DeliveryState.PENDING, attempts, now + backoff_s(attempts), None, attempt.error)


def _delivery(
    record: EventRecord,
    project: str | None,
    tenant: BatchStorage,
    sender: WebhookSender,
    now: float,
) -> Delivery | None:
    """The event's delivery state after this tick; None while its publish is still writing."""
    batch_id = record.event.data.id
    status = read_batch(tenant, batch_id).status if batch_exists(tenant, batch_id) else None
    if status != record.event.batch_status:
        if status is None or status.ended:  # the publish that wrote it lost
            return Delivery(DeliveryState.SUPERSEDED, record.delivery.attempts)
        return None
    if sender.url_for(project) is None:
        return Delivery(DeliveryState.NO_ENDPOINT)
    return _next_delivery(record, project, sender, now)


def deliver_due(
    storage: BatchStorage, sender: WebhookSender, now: float, budget_s: float = TICK_BUDGET_S
) -> dict[str, int]:
    """Attempt every pending event that is due; returns how many ended in each state."""
    started = time.monotonic()
    outcome: dict[str, int] = {}
    for project, tenant in storage.tenants():
        for record in pending_events(tenant):
            if record.delivery.next_attempt_at > now:
                continue
            if time.monotonic() - started > budget_s:
                return outcome  # the next tick goes on
            delivery = _delivery(record, project, tenant, sender, now)
            if delivery is None:
                continue
            save_delivery(tenant, msgspec.structs.replace(record, delivery=delivery))
            logger.info(
                "event %s (%s of %s): %s after %d attempts%s",
                record.event.id,
                record.event.type,
                record.event.data.id,
                delivery.state,
                delivery.attempts,
                f" ({delivery.last_error})" if delivery.state != DeliveryState.DELIVERED else "",
            )
            outcome[delivery.state] = outcome.get(delivery.state, 0) + 1
    return outcome


@dg.sensor(
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends each batch's terminal event (batch.completed, ...) to its project's "
    "webhook (BATCH_WEBHOOKS), signed, retried with back-off until delivered.",
)
def webhook_sensor(
    context: dg.SensorEvaluationContext, storage: BatchStorage, webhooks: WebhookSender
) -> dg.SkipReason:
    outcome = deliver_due(storage, webhooks, time.time())
    if outcome:
        context.log.info("webhook events: %s", outcome)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(outcome.items()))
    return dg.SkipReason(summary or "no webhook event due")
