"""Webhooks as OpenAI sends them: Standard Webhooks signatures, one endpoint per project.

``BATCH_WEBHOOKS`` holds comma-separated ``PROJECT=URL`` entries (a bare ``URL`` is the root,
for a storage without projects) and ``BATCH_WEBHOOK_SECRETS`` the ``PROJECT=whsec_...``
signing secrets the same way. A request carries ``webhook-id`` (the event's id, the same on
every attempt), ``webhook-timestamp`` (the attempt's time) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` under the secret's base64 key),
so ``OpenAI(webhook_secret=...).webhooks.unwrap(body, headers)`` accepts it. Redirects are
not followed: the endpoint is the one configured, never one an answer names. A secret never
reaches a log or an error message.
"""

import base64
import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass

import dagster as dg
import httpx
from pydantic import Field

SECRET_PREFIX = "whsec_"
USER_AGENT = "dagster-vllm-batch-webhooks/1"
_PROJECT_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)=(.+)$")
BACKOFF_FIRST_S = 5.0
BACKOFF_MAX_S = 3600.0


def parse_entries(text: str, setting: str) -> dict[str | None, str]:
    """``{project: value}`` of ``PROJECT=VALUE,...``; a bare ``VALUE`` is the root (None)."""
    entries: dict[str | None, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        match = _PROJECT_ENTRY.match(entry)
        project, value = (match.group(1), match.group(2)) if match else (None, entry)
        if project in entries:
            raise ValueError(f"{setting}: {project or 'the root'} is named twice")
        entries[project] = value.strip()
    return entries


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for one attempt."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1,{base64.b64encode(mac.digest()).decode()}"


def backoff_s(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 5 s, 10 s, ... 1 h."""
    return min(BACKOFF_FIRST_S * 2 ** max(0, attempts - 1), BACKOFF_MAX_S)


def check_settings(endpoints: str, secrets: str) -> None:
    """Refuse settings that cannot work: a URL that is not http(s), a URL without a secret,
    a secret that is not ``whsec_`` base64 (the message never shows a secret)."""
    urls = parse_entries(endpoints, "BATCH_WEBHOOKS")
    keys = parse_entries(secrets, "BATCH_WEBHOOK_SECRETS")
    for project, url in urls.items():
        who = project or "the root"
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"BATCH_WEBHOOKS: {who}'s URL is not http(s): {url}")
        if project not in keys:
            raise ValueError(f"BATCH_WEBHOOK_SECRETS: no secret for {who}")
    for project, secret in keys.items():
        try:
            ok = secret.startswith(SECRET_PREFIX) and base64.b64decode(
                secret.removeprefix(SECRET_PREFIX), validate=True
            )
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"BATCH_WEBHOOK_SECRETS: {project or 'the root'}'s secret is not whsec_<base64>"
            )


@dataclass(frozen=True)
class Attempt:
    ok: bool
    error: str | None = None  # what went wrong, for the delivery state (never the secret)


class WebhookSender(dg.ConfigurableResource):
    """Where each project's events go, how they are signed, and for how long they are retried."""

    endpoints: str = Field(
        default="", description="PROJECT=URL,... (a bare URL: the root) (BATCH_WEBHOOKS)."
    )
    secrets: str = Field(
        default="",
        description="PROJECT=whsec_...,... signing secrets (BATCH_WEBHOOK_SECRETS, as dg.EnvVar).",
    )
    retry_hours: float = Field(
        default=24.0,
        description="How long an event is retried before it is given up "
        "(BATCH_WEBHOOK_RETRY_HOURS).",
    )
    timeout_s: float = Field(default=10.0, description="Seconds an endpoint has to answer.")

    @classmethod
    def from_env(cls) -> "WebhookSender":
        """The settings of BATCH_WEBHOOKS, BATCH_WEBHOOK_SECRETS and BATCH_WEBHOOK_RETRY_HOURS,
        checked (a bad one is a load error of the code location). The secrets reach Dagster
        as ``dg.EnvVar``, so its UI and run config show the variable's name, not the value."""
        endpoints = os.environ.get("BATCH_WEBHOOKS", "")
        secrets = os.environ.get("BATCH_WEBHOOK_SECRETS", "")
        check_settings(endpoints, secrets)
        fields: dict = {"endpoints": endpoints}
        if secrets:
            fields["secrets"] = dg.EnvVar("BATCH_WEBHOOK_SECRETS")
        if hours := os.environ.get("BATCH_WEBHOOK_RETRY_HOURS"):
            fields["retry_hours"] = float(hours)
        return cls(**fields)

    def check(self) -> None:
        """:func:`check_settings` on this resource's own (resolved) values."""
        check_settings(self.endpoints, self.secrets)

    def url_for(self, project: str | None) -> str | None:
        return parse_entries(self.endpoints, "BATCH_WEBHOOKS").get(project)

    def deliver(self, project: str | None, webhook_id: str, body: bytes) -> Attempt:
        """One signed POST of ``body`` to the project's endpoint."""
        url = self.url_for(project)
        secret = parse_entries(self.secrets, "BATCH_WEBHOOK_SECRETS").get(project)
        if url is None or secret is None:
            return Attempt(False, "no webhook endpoint for the project")
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, body),
        }
        try:
            with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
                answer = client.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            return Attempt(False, f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as error:
            return Attempt(False, f"{type(error).__name__}: {error}")
        if 200 <= answer.status_code < 300:
            return Attempt(True)
        return Attempt(False, f"HTTP {answer.status_code}")
