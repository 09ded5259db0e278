"""The hot task routes read their parameters themselves (qw_api.fastroute.SubmitRoute): every request they refuse
must get exactly the answer FastAPI's own parameter handling gives, and every request FastAPI accepts must still
be accepted. The reference is the same endpoint function registered as a plain FastAPI route on an app sharing
the real API's services (the refused requests never reach the broker or the store)."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from qw_api.routes import emails
from qw_api.schemas import SUBMIT_ERRORS, TaskAccepted
from qw_core.topology import queue_name

pytestmark = pytest.mark.integration
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi Ann"}
GOOD = json.dumps(EMAIL)
AUTH = {"Authorization": "Bearer key-acme"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def reference(api):
    """POST /v1/emails handled by FastAPI alone: the same endpoint, the same services, a plain APIRoute."""
    app = FastAPI()
    app.state.services = api[1].state.services
    app.add_api_route(
        "/v1/emails",
        emails.send_email,
        methods=["POST"],
        status_code=202,
        response_model=TaskAccepted,
        responses=SUBMIT_ERRORS,
    )
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


REFUSED = {
    "invalid JSON": ({**AUTH, **JSON}, '{"to": ', ""),
    "invalid JSON, no key": (JSON, '{"to": ', ""),
    "empty body": ({**AUTH, **JSON}, "", ""),
    "a list": ({**AUTH, **JSON}, "[1]", ""),
    "missing field": ({**AUTH, **JSON}, json.dumps({"to": "ann@example.com"}), ""),
    "bad address": ({**AUTH, **JSON}, json.dumps({**EMAIL, "to": "nobody"}), ""),
    "header injection": ({**AUTH, **JSON}, json.dumps({**EMAIL, "subject": "a\r\nBcc: x@example.com"}), ""),
    "unknown field": ({**AUTH, **JSON}, json.dumps({**EMAIL, "bcc": "x@example.com"}), ""),
    "no body at all": ({**AUTH, **JSON}, json.dumps({"to": "ann@example.com", "subject": "s"}), ""),
    "text/plain": ({**AUTH, "Content-Type": "text/plain"}, GOOD, ""),
    "no content type": (AUTH, GOOD, ""),
    "no key": (JSON, GOOD, ""),
    "wrong key": ({"Authorization": "Bearer nope", **JSON}, GOOD, ""),
    "basic auth": ({"Authorization": "Basic a2V5LWFjbWU6", **JSON}, GOOD, ""),
    "bearer without a key": ({"Authorization": "Bearer", **JSON}, GOOD, ""),
    "key too long": ({**AUTH, **JSON, "Idempotency-Key": "k" * 256}, GOOD, ""),
    "key with a tab": ({**AUTH, **JSON, "Idempotency-Key": "a\tb"}, GOOD, ""),
    "delay 0": ({**AUTH, **JSON}, GOOD, "delay=0"),
    "delay -1": ({**AUTH, **JSON}, GOOD, "delay=-1"),
    "delay over a day": ({**AUTH, **JSON}, GOOD, "delay=86400.5"),
    "delay soon": ({**AUTH, **JSON}, GOOD, "delay=soon"),
    "delay nan": ({**AUTH, **JSON}, GOOD, "delay=nan"),
    "delay inf": ({**AUTH, **JSON}, GOOD, "delay=inf"),
    "delay empty": ({**AUTH, **JSON}, GOOD, "delay="),
    "last delay bad": ({**AUTH, **JSON}, GOOD, "delay=5&delay=0"),
    "everything wrong": ({**AUTH, **JSON, "Idempotency-Key": "a\tb"}, json.dumps({"to": "x"}), "delay=0"),
    "everything wrong, no key": ({**JSON, "Idempotency-Key": "a\tb"}, json.dumps({"to": "x"}), "delay=0"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_request_gets_fastapis_own_answer_and_queues_nothing(api, http, reference, peek, case):
    headers, body, query = REFUSED[case]
    url = "/v1/emails" + (f"?{query}" if query else "")
    expected = reference.post(url, content=body, headers=headers)
    with httpx.Client(base_url=http.base_url, timeout=30) as bare:  # no default Authorization header
        got = bare.post(url, content=body, headers=headers)
    assert expected.status_code in (400, 401, 422)
    assert (got.status_code, got.json()) == (expected.status_code, expected.json())
    assert got.headers.get("www-authenticate") == expected.headers.get("www-authenticate")
    assert peek.depth(queue_name("email")) == 0
    assert api[1].state.services.store.counts() == {}


ACCEPTED = {
    "charset": ({**AUTH, "Content-Type": "application/json; charset=utf-8"}, ""),
    "upper-case type": ({**AUTH, "Content-Type": "Application/JSON"}, ""),
    "problem+json type": ({**AUTH, "Content-Type": "application/merge-patch+json"}, ""),
    "key with inner spaces": ({**AUTH, **JSON, "Idempotency-Key": "order 42 / try"}, ""),
    "longest key": ({**AUTH, **JSON, "Idempotency-Key": "k" * 255}, ""),
    "delay 0.5": ({**AUTH, **JSON}, "delay=0.5"),
    "delay 1e1": ({**AUTH, **JSON}, "delay=1e1"),
    "delay a day": ({**AUTH, **JSON}, "delay=86400"),
    "last delay good": ({**AUTH, **JSON}, "delay=0&delay=5"),
    "other query": ({**AUTH, **JSON}, "utm=x"),
    "lower-case bearer": ({"Authorization": "bearer key-acme", **JSON}, ""),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_a_request_fastapi_accepts_is_accepted(api, http, peek, case):
    headers, query = ACCEPTED[case]
    with httpx.Client(base_url=http.base_url, timeout=30) as bare:
        r = bare.post("/v1/emails" + (f"?{query}" if query else ""), content=GOOD, headers=headers)
    assert r.status_code == 202, r.text
    delayed = "delay" in query
    assert r.json()["status"] == ("scheduled" if delayed else "queued")
    assert api[1].state.services.store.counts() == {"scheduled" if delayed else "queued": 1}
    if not delayed:
        assert peek.depth(queue_name("email")) == 1
