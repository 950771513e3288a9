"""Webhooks: the event a batch's end writes, and its delivery to a real HTTP endpoint on
loopback, as the official SDK verifies it. The clock of the delivery loop is the test's, so
back-off and the retry period are checked in milliseconds; `dagster dev` runs them for real in
tests/test_dagster_dev.py and tests/test_api_dagster.py."""

import logging
import time

import dagster as dg
import openai
import pytest
from openai.types.webhooks import BatchCompletedWebhookEvent, BatchFailedWebhookEvent

from batch_assets.lifecycle.batches import fail_batch, register_batch
from batch_assets.lifecycle.events import (
    DeliveryState,
    batch_event,
    pending_events,
    record_event,
)
from resources.storage import BatchStorage
from resources.webhooks import WebhookSender, backoff_s, sign
from sensors.webhooks import deliver_due, webhook_sensor
from tests.conftest import drive
from tests.webhook_receiver import Receiver, new_secret


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def _storage(tmp_path) -> BatchStorage:
    return BatchStorage(root=str(tmp_path / "storage"), projects=["team-a", "team-b", "team-c"])


def _batch(storage: BatchStorage, project: str, name: str = "a") -> str:
    tenant = storage.for_project(project)
    tenant.write_bytes(f"inbox/{name}.jsonl", b'{"custom_id": "a"}\n')
    return register_batch(tenant, f"inbox/{name}.jsonl")


def _sdk(secret: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", webhook_secret=secret)


def test_an_event_is_retried_with_one_id_until_delivered_and_the_sdk_verifies_it(
    tmp_path, receivers, caplog
):
    storage = _storage(tmp_path)
    a, b = receivers(script=[500, 500]), receivers()
    secret_a, secret_b = new_secret(), new_secret()
    sender = WebhookSender(
        endpoints=f"team-a={a.url},team-b={b.url}", secrets=f"team-a={secret_a},team-b={secret_b}"
    )
    sender.check()
    batch_id = _batch(storage, "team-a")
    drive(storage.for_project("team-a"), batch_id, "completed")
    _batch(storage, "team-b")  # team-b's batch has not ended: it has no event

    caplog.set_level(logging.DEBUG)
    now = time.time()
    assert deliver_due(storage, sender, now) == {"pending": 1}  # 500
    assert deliver_due(storage, sender, now + backoff_s(1) - 1) == {}  # not due yet
    assert deliver_due(storage, sender, now + backoff_s(1)) == {"pending": 1}  # 500
    assert deliver_due(storage, sender, now + backoff_s(1) + backoff_s(2)) == {"delivered": 1}
    assert deliver_due(storage, sender, now + 3600) == {}  # delivered once, never again

    assert [r.status for r in a.received] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in a.received}) == 1
    assert len({r.body for r in a.received}) == 1
    assert b.received == []  # another project's endpoint gets nothing
    got = a.delivered[0]
    event = _sdk(secret_a).webhooks.unwrap(got.body, got.headers)
    assert isinstance(event, BatchCompletedWebhookEvent)
    assert (event.object, event.data.id, event.id) == ("event", batch_id, got.headers["webhook-id"])
    assert event.id.startswith("evt_") and abs(event.created_at - now) < 60
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _sdk(secret_b).webhooks.unwrap(got.body, got.headers)  # another secret
    old = int(time.time()) - 600  # a replay of an old delivery
    replayed = {
        **got.headers,
        "webhook-timestamp": str(old),
        "webhook-signature": sign(secret_a, event.id, old, got.body),
    }
    with pytest.raises(openai.InvalidWebhookSignatureError, match="too old"):
        _sdk(secret_a).webhooks.unwrap(got.body, replayed)

    record = batch_event(storage.for_project("team-a"), batch_id, "completed")
    assert record is not None
    assert (record.delivery.state, record.delivery.attempts) == (DeliveryState.DELIVERED, 3)
    assert record.delivery.last_error == "HTTP 500"
    assert list(pending_events(storage.for_project("team-a"))) == []
    assert secret_a not in caplog.text and secret_a.removeprefix("whsec_") not in caplog.text


def test_a_project_without_an_endpoint_keeps_its_event_unsent(tmp_path, receivers):
    storage = _storage(tmp_path)
    a = receivers()
    sender = WebhookSender(endpoints=f"team-a={a.url}", secrets=f"team-a={new_secret()}")
    tenant = storage.for_project("team-c")
    batch_id = _batch(storage, "team-c")
    fail_batch(tenant, batch_id, "bad_file", "not JSONL")
    assert deliver_due(storage, sender, time.time()) == {"no_endpoint": 1}
    record = batch_event(tenant, batch_id, "failed")
    assert record is not None and record.event.type == "batch.failed"
    BatchFailedWebhookEvent.model_validate_json(record.body())
    assert record.delivery.state is DeliveryState.NO_ENDPOINT
    assert a.received == []


def test_redirects_timeouts_and_refusals_are_failed_attempts_until_the_period_ends(
    tmp_path, receivers
):
    storage = _storage(tmp_path)
    redirecting = receivers(then=307)
    stalling = receivers(stall_s=2.0)
    refused = receivers()
    refused_url = refused.url
    refused.close()  # nothing listens there any more
    tenant = storage.for_project("team-a")
    batch_id = _batch(storage, "team-a")
    drive(tenant, batch_id, "cancelled")
    now = time.time()
    errors = []
    for hour, url in enumerate((redirecting.url, stalling.url, refused_url), 1):
        sender = WebhookSender(
            endpoints=f"team-a={url}", secrets=f"team-a={new_secret()}", timeout_s=0.5
        )
        assert deliver_due(storage, sender, now + hour * 3600) == {"pending": 1}
        record = batch_event(tenant, batch_id, "cancelled")
        assert record is not None
        errors.append(record.delivery.last_error)
    assert errors[0] == "HTTP 307"
    assert [r.path for r in redirecting.received] == ["/hook"]  # the redirect not followed
    assert errors[1] == "no answer within 0.5 s"
    assert errors[2] is not None and "ConnectError" in errors[2]

    # A day after the event (the default retry period), the next failure gives it up.
    sender = WebhookSender(endpoints=f"team-a={redirecting.url}", secrets=f"team-a={new_secret()}")
    assert deliver_due(storage, sender, now + 24 * 3600) == {"gave_up": 1}
    record = batch_event(tenant, batch_id, "cancelled")
    assert record is not None and record.delivery.state is DeliveryState.GAVE_UP
    assert record.delivery.attempts == 4


def test_an_event_whose_batch_ended_otherwise_is_superseded(tmp_path, receivers):
    """A publish that wrote its event and then lost (the batch failed instead) sends nothing."""
    storage = _storage(tmp_path)
    a = receivers()
    sender = WebhookSender(endpoints=f"team-a={a.url}", secrets=f"team-a={new_secret()}")
    tenant = storage.for_project("team-a")
    batch_id = _batch(storage, "team-a")
    drive(tenant, batch_id, "finalizing")
    record_event(tenant, batch_id, "completed", int(time.time()))  # written; record not yet
    assert deliver_due(storage, sender, time.time()) == {}  # waits for the record
    fail_batch(tenant, batch_id, "run_failed", "the publish failed")
    assert deliver_due(storage, sender, time.time()) == {"superseded": 1, "delivered": 1}
    completed = batch_event(tenant, batch_id, "completed")
    assert completed is not None and completed.delivery.state is DeliveryState.SUPERSEDED
    assert [r.body for r in a.delivered] == [batch_event(tenant, batch_id, "failed").body()]


@pytest.mark.parametrize(
    ("endpoints", "secrets", "message"),
    [
        ("team-a=ftp://host/x", "team-a=whsec_AAAA", "team-a's URL is not http"),
        ("team-a=http://host/x", "", "no secret for team-a"),
        ("http://host/x", "whsec_not base64!", "the root's secret is not whsec_"),
        ("team-a=http://h/x,team-a=http://h/y", "team-a=whsec_AAAA", "team-a is named twice"),
    ],
)
def test_bad_settings_are_refused_without_showing_a_secret(endpoints, secrets, message):
    with pytest.raises(ValueError, match=message) as refused:
        WebhookSender(endpoints=endpoints, secrets=secrets).check()
    assert "not base64!" not in str(refused.value)


def test_the_sensor_delivers_with_the_secret_from_the_environment(tmp_path, receivers, monkeypatch):
    """As the code location builds it: the secret reaches Dagster as an EnvVar, resolved only
    where the sensor runs."""
    storage = BatchStorage(root=str(tmp_path / "storage"))
    hook, secret = receivers(), new_secret()
    monkeypatch.setenv("BATCH_WEBHOOKS", hook.url)
    monkeypatch.setenv("BATCH_WEBHOOK_SECRETS", secret)
    sender = WebhookSender.from_env()
    assert secret not in repr(sender)
    storage.write_bytes("inbox/a.jsonl", b'{"custom_id": "a"}\n')
    batch_id = register_batch(storage, "inbox/a.jsonl")
    drive(storage, batch_id, "expired")
    with dg.build_sensor_context(resources={"storage": storage, "webhooks": sender}) as context:
        result = webhook_sensor(context)
    assert "1 delivered" in str(result.skip_message)
    (got,) = hook.delivered
    assert _sdk(secret).webhooks.unwrap(got.body, got.headers).type == "batch.expired"
    monkeypatch.setenv("BATCH_WEBHOOK_SECRETS", "whsec_!!")
    with pytest.raises(ValueError, match="the root's secret is not whsec_"):
        WebhookSender.from_env()
