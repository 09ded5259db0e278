from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from qw_core.messages import EmailTask, ImageOptions, ImageTask, TaskMessage


def _email(**kw):
    base = {"to": "a@example.com", "subject": "Hi", "text": "body"}
    return EmailTask(**{**base, **kw})


def test_message_round_trips_through_bytes():
    msg = TaskMessage(task_id="t1", tenant="acme", created_at=datetime.now(UTC), payload=_email())
    again = TaskMessage.from_bytes(msg.to_bytes())
    assert again == msg and again.kind == "email"


def test_image_payload_is_picked_by_kind():
    body = TaskMessage(
        task_id="t2",
        tenant="a",
        created_at=datetime.now(UTC),
        payload=ImageTask(source_key="uploads/a/x.png", source_format="PNG", options=ImageOptions(width=10)),
    ).to_bytes()
    assert isinstance(TaskMessage.from_bytes(body).payload, ImageTask)


def test_future_schema_version_is_refused():
    msg = TaskMessage(task_id="t1", tenant="a", created_at=datetime.now(UTC), payload=_email())
    body = msg.to_bytes().replace(b'"v":1', b'"v":2')
    with pytest.raises(ValidationError):
        TaskMessage.from_bytes(body)


@pytest.mark.parametrize("subject", ["a\r\nBcc: x@y.z", "a\nBcc: x@y.z", "a\rb", "a\x00b"])
def test_subject_with_line_breaks_is_refused(subject):
    with pytest.raises(ValidationError, match="CR, LF or NUL"):
        _email(subject=subject)


@pytest.mark.parametrize("to", ["not-an-email", "a@example.com, b@example.com", "a@example.com\r\nBcc: c@d.e", ""])
def test_bad_or_multiple_recipients_are_refused(to):
    with pytest.raises(ValidationError):
        _email(to=to)


def test_email_needs_a_body():
    with pytest.raises(ValidationError, match="text, html or a template"):
        EmailTask(to="a@example.com", subject="s")


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError):
        _email(cc="x@example.com")
