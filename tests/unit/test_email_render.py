"""Pure parts of the email task: rendering, message building (CR/LF safety), SMTP error classification."""

from __future__ import annotations

import smtplib

import pytest
from qw_core.messages import EmailTask
from qw_workers.errors import PermanentError
from qw_workers.mail import Rendered, build_message, classify_smtp_error, render

SENDER = "QueueWorker <noreply@qw.test>"


def test_template_renders_text_plain_and_html_escaped():
    task = EmailTask(
        to="a@example.com", subject="s", template="welcome", context={"name": "<b>Ann</b>", "product": "Q&A"}
    )
    out = render(task)
    assert "Hello <b>Ann</b>," in out.text and "Q&A" in out.text
    assert "Hello &lt;b&gt;Ann&lt;/b&gt;," in out.html and "Q&amp;A" in out.html


def test_explicit_parts_win_over_the_template():
    task = EmailTask(
        to="a@example.com", subject="s", template="welcome", text="mine", context={"name": "x", "product": "y"}
    )
    out = render(task)
    assert out.text == "mine" and "Hello x" in out.html


@pytest.mark.parametrize(
    ("template", "context", "match"),
    [("no-such", {}, "unknown email template"), ("welcome", {"name": "x"}, "needs context key 'product'")],
)
def test_template_errors_are_permanent(template, context, match):
    with pytest.raises(PermanentError, match=match):
        render(EmailTask(to="a@example.com", subject="s", template=template, context=context))


def test_message_headers_and_multipart():
    task = EmailTask(to="a@example.com", subject="Hé there", reply_to="r@example.com", text="t")
    msg = build_message("abc123", task, Rendered("t", "<p>h</p>"), SENDER, 0.0)
    assert msg["From"] == SENDER and msg["To"] == "a@example.com" and msg["Subject"] == "Hé there"
    assert msg["Reply-To"] == "r@example.com" and msg["X-QW-Task-Id"] == "abc123"
    assert msg["Message-ID"] == "<qw-abc123@qw.test>" and msg["Date"].datetime.timestamp() == 0
    assert msg.get_content_type() == "multipart/alternative"
    assert b"\r\nBcc" not in msg.as_bytes()


def test_html_only_and_text_only_bodies():
    task = EmailTask(to="a@example.com", subject="s", text="t")
    assert build_message("i", task, Rendered(None, "<p>h</p>"), SENDER, 0).get_content_type() == "text/html"
    assert build_message("i", task, Rendered("t", None), SENDER, 0).get_content_type() == "text/plain"


@pytest.mark.parametrize("bad", ["a\r\nBcc: evil@example.com", "a\nX: y", "a\rX: y", "a\x00"])
def test_header_injection_is_refused(bad):
    # The message schema refuses these already; the builder refuses them again (defence in depth).
    task = EmailTask.model_construct(to="a@example.com", subject=bad, text="t", reply_to=None, html=None, template=None)
    with pytest.raises(PermanentError, match="Subject"):
        build_message("i", task, Rendered("t", None), SENDER, 0)
    with pytest.raises(PermanentError, match="From"):
        build_message("i", EmailTask(to="a@example.com", subject="s", text="t"), Rendered("t", None), bad, 0)


def test_task_id_cannot_smuggle_headers():
    msg = build_message(
        "id\r\nBcc: x@example.com", EmailTask(to="a@example.com", subject="s", text="t"), Rendered("t", None), SENDER, 0
    )
    assert msg["X-QW-Task-Id"] == "idBccxexample.com" and msg.get_all("Bcc") is None


@pytest.mark.parametrize(
    ("exc", "data_started", "permanent", "maybe_sent"),
    [
        (smtplib.SMTPDataError(451, b"try later"), True, False, False),
        (smtplib.SMTPDataError(554, b"rejected"), True, True, False),
        (smtplib.SMTPSenderRefused(553, b"no", "a@b"), False, True, False),
        (smtplib.SMTPRecipientsRefused({"a@b": (550, b"no such user")}), False, True, False),
        (smtplib.SMTPRecipientsRefused({"a@b": (450, b"mailbox busy")}), False, False, False),
        (smtplib.SMTPAuthenticationError(535, b"bad creds"), False, False, False),
        (smtplib.SMTPConnectError(554, b"no service"), False, False, False),
        (ConnectionRefusedError(111, "refused"), False, False, False),
        (TimeoutError("timed out"), False, False, False),
        (TimeoutError("timed out"), True, False, True),
        (smtplib.SMTPServerDisconnected("gone"), False, False, False),
        (smtplib.SMTPServerDisconnected("gone"), True, False, True),
    ],
)
def test_smtp_error_classification(exc, data_started, permanent, maybe_sent):
    failure = classify_smtp_error(exc, data_started)
    assert (failure.permanent, failure.maybe_sent) == (permanent, maybe_sent)
