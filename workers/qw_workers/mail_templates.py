"""Named email templates (string.Template: `$name`). Context values are HTML-escaped for the html part."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MailTemplate:
    text: str
    html: str


TEMPLATES: dict[str, MailTemplate] = {
    "welcome": MailTemplate(
        text="Hello $name,\n\nwelcome to $product. We are glad you are here.\n",
        html="<p>Hello $name,</p>\n<p>welcome to <strong>$product</strong>. We are glad you are here.</p>\n",
    ),
    "password_reset": MailTemplate(
        text="Hello $name,\n\nreset your password here: $reset_url\nThe link expires in $expires_minutes minutes.\n"
        "If you did not ask for this, ignore this message.\n",
        html='<p>Hello $name,</p>\n<p><a href="$reset_url">Reset your password</a>. The link expires in '
        "$expires_minutes minutes.</p>\n<p>If you did not ask for this, ignore this message.</p>\n",
    ),
    "notification": MailTemplate(
        text="$message\n",
        html="<p>$message</p>\n",
    ),
}
