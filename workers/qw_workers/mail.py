"""The email task: pure rendering and message building, SMTP delivery at the edge, effect claim for idempotency.

A claim in the store (`claim_effect(task_id, "email")`) makes a duplicate delivery skip the send. When a
failure proves nothing was accepted (refused connection, a 4xx/5xx answer before or to DATA) the claim is
released so a retry can send; when it is uncertain (connection lost after DATA began) the claim stays. A claim
left unfinished past its lease (the sender died, or could not record "sent" because the store was down) means
the mail may have gone out: it is not sent again and the task ends dead saying so, unless
QW_EMAIL_RESEND_IN_DOUBT=true (at least once instead of at most once). After a successful send, recording it
is retried for a while before giving up, so a short store outage does not leave a sent mail in doubt.
A tenant's outbound rate (mails per window over every worker, QW_EMAIL_TENANT_RATE) defers its mails past the
limit through the retry queues, without using their attempts and without holding a worker other tenants need.
"""

from __future__ import annotations

import html
import re
import smtplib
import ssl
import string
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

from qw_core.messages import EmailTask
from qw_core.settings import WorkerSettings
from qw_core.store import StoreUnavailable

from qw_workers.context import TaskContext
from qw_workers.errors import Deferred, PermanentError, RetryableError
from qw_workers.mail_templates import TEMPLATES

EFFECT = "email"
_HEADER_BREAK = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True)
class Rendered:
    text: str | None
    html: str | None


def render(task: EmailTask) -> Rendered:
    """Explicit text/html win; a template fills the parts not given. Raises PermanentError."""
    text, body_html = task.text, task.html
    if task.template is not None:
        tpl = TEMPLATES.get(task.template)
        if tpl is None:
            raise PermanentError(f"unknown email template {task.template!r}")
        plain = {k: str(v) for k, v in task.context.items()}
        escaped = {k: html.escape(v, quote=True) for k, v in plain.items()}
        try:
            text = text if text is not None else string.Template(tpl.text).substitute(plain)
            body_html = body_html if body_html is not None else string.Template(tpl.html).substitute(escaped)
        except KeyError as exc:
            raise PermanentError(f"template {task.template!r} needs context key {exc.args[0]!r}") from exc
        except ValueError as exc:
            raise PermanentError(f"template {task.template!r} could not be rendered: {exc}") from exc
    if not text and not body_html:
        raise PermanentError("the email has no body")
    return Rendered(text, body_html)


def _header(value: str, name: str) -> str:
    if _HEADER_BREAK.search(value):
        raise PermanentError(f"the {name} header must not contain CR, LF or NUL")
    return value


def build_message(task_id: str, task: EmailTask, body: Rendered, sender: str, now: float) -> EmailMessage:
    """A complete message; the Message-ID is derived from the task id so receivers can spot repeats."""
    msg = EmailMessage()
    msg["From"] = _header(sender, "From")
    msg["To"] = _header(str(task.to), "To")
    msg["Subject"] = _header(task.subject, "Subject")
    msg["Date"] = formatdate(now, usegmt=True)
    domain = sender.rpartition("@")[2].strip(">") or "localhost"
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "", task_id)[:128] or "task"
    msg["Message-ID"] = _header(f"<qw-{safe_id}@{domain}>", "Message-ID")
    if task.reply_to:
        msg["Reply-To"] = _header(str(task.reply_to), "Reply-To")
    msg["X-QW-Task-Id"] = _header(safe_id, "X-QW-Task-Id")
    if body.text is not None and body.html is not None:
        msg.set_content(body.text)
        msg.add_alternative(body.html, subtype="html")
    elif body.html is not None:
        msg.set_content(body.html, subtype="html")
    else:
        msg.set_content(body.text or "")
    return msg


class SmtpFailure(Exception):
    def __init__(self, message: str, permanent: bool, maybe_sent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.maybe_sent = maybe_sent


def classify_smtp_error(exc: BaseException, data_started: bool) -> SmtpFailure:
    """5xx answers are permanent; 4xx, refused connections, timeouts and disconnects are transient.

    Authentication and STARTTLS problems are the deployment's, not the message's: transient (fix and retry).
    `maybe_sent` is False whenever the server certainly did not accept the message.
    """
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()] or [500]
        detail = "; ".join(f"{code} {resp!r}" for code, resp in exc.recipients.values())
        return SmtpFailure(f"recipient refused: {detail}", all(c >= 500 for c in codes), False)
    if isinstance(exc, smtplib.SMTPAuthenticationError | smtplib.SMTPNotSupportedError | smtplib.SMTPConnectError):
        return SmtpFailure(f"SMTP session failed: {exc}", False, False)
    if isinstance(exc, smtplib.SMTPResponseException):
        return SmtpFailure(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", exc.smtp_code >= 500, False)
    if isinstance(exc, ConnectionRefusedError) or (isinstance(exc, OSError) and not data_started):
        return SmtpFailure(f"SMTP server unreachable: {type(exc).__name__}: {exc}", False, False)
    return SmtpFailure(f"SMTP delivery interrupted: {type(exc).__name__}: {exc}", False, data_started)


def deliver(msg: EmailMessage, to: str, settings: WorkerSettings) -> None:
    """Send one message; raises SmtpFailure. MAIL, RCPT and DATA are separate steps to know what happened."""
    data_started = False
    smtp: smtplib.SMTP | None = None
    try:
        smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout)
        smtp.ehlo_or_helo_if_needed()
        if settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if settings.smtp_username:
            smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
        code, resp = smtp.mail(settings.smtp_from)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, resp, settings.smtp_from)
        code, resp = smtp.rcpt(to)
        if code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({to: (code, resp)})
        data_started = True
        code, resp = smtp.data(msg.as_bytes())  # data() returns the final reply instead of raising
        if code != 250:
            raise smtplib.SMTPDataError(code, resp)
    except Exception as exc:
        raise classify_smtp_error(exc, data_started) from exc
    finally:
        if smtp is not None:
            try:
                smtp.quit()
            except Exception:
                smtp.close()


def claim_lease(settings: WorkerSettings) -> float:
    """How long a send claim blocks other attempts: well beyond one SMTP session's timeouts."""
    return max(60.0, 4 * settings.smtp_timeout)


def send(payload: EmailTask, ctx: TaskContext) -> None:
    """Send one email (POST /v1/emails) at most once, over the tenant's outbound rate only when its window allows."""
    msg = build_message(ctx.task_id, payload, render(payload), ctx.settings.smtp_from, time.time())
    resend = ctx.settings.email_resend_in_doubt
    claim = ctx.store.claim_effect(ctx.task_id, EFFECT, claim_lease(ctx.settings), take_over=resend)
    if claim == "stale":
        raise PermanentError(
            "an earlier attempt began sending this email and its outcome was never recorded (it died, or the store "
            "was down); it may have been sent, so it is not sent again, to avoid a duplicate "
            "(QW_EMAIL_RESEND_IN_DOUBT=true resends in this case)"
        )
    if claim == "done":
        ctx.log.info("email already sent for this task; not sending again")
        return None
    if claim == "busy":
        raise RetryableError(
            "an earlier attempt claimed this email's send and did not finish (it may have sent it before it died); "
            "not sending again, to avoid a duplicate"
        )
    _within_rate(ctx)
    try:
        deliver(msg, str(payload.to), ctx.settings)
    except SmtpFailure as failure:
        if not failure.maybe_sent:
            ctx.store.release_effect(ctx.task_id, EFFECT)
        if failure.permanent:
            raise PermanentError(str(failure)) from failure
        raise RetryableError(str(failure)) from failure
    _record_sent(ctx, ctx.task_id)
    return None


def _within_rate(ctx: TaskContext) -> None:
    """The tenant's outbound rate (QW_EMAIL_TENANT_RATE / _LIMITS per QW_EMAIL_RATE_WINDOW_SECONDS), counted in the
    store over every email worker. Past it the claim is released and the mail deferred (not failed, no attempt
    used) until its window ends."""
    rate = ctx.settings.email_rate(ctx.tenant)
    if rate <= 0:
        return
    window = ctx.settings.email_rate_window_seconds
    wait = ctx.store.take_token(ctx.tenant, EFFECT, rate, window)
    if wait:
        ctx.store.release_effect(ctx.task_id, EFFECT)
        limit = f"{rate} per {window}s"
        raise Deferred(f"tenant {ctx.tenant!r} reached its email rate of {limit}; deferred about {wait:.0f}s", wait)


def _record_sent(ctx: TaskContext, task_id: str, attempts: int = 6) -> None:
    """The mail is out: keep trying to record it (about 6 s in all) before a store outage leaves it in doubt."""
    for attempt in range(attempts):
        try:
            ctx.store.finish_effect(task_id, EFFECT)
            return
        except StoreUnavailable:
            if attempt == attempts - 1:
                raise
            time.sleep(min(0.2 * 2**attempt, 2.0))
