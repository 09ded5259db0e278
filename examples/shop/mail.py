"""The order confirmation email: rendered from the order row, sent over SMTP once per order.

The claim row (shop_confirmations) and the send share one transaction, committed as soon as the server has
accepted the message and before QUIT. A run killed before that commit leaves no claim (the database rolls it
back); a server that never got the end of the message delivers nothing, and the redelivered task sends it. A
second run after the commit finds the claim and sends nothing. What is left is the time between the end of the
message reaching the server and our COMMIT reaching the database — the server's answer to it (milliseconds, or as
long as a slow relay takes) plus the commit: a server keeps a message it got whole even when the sender dies
before the "250", so a kill then sends it twice. No order of claim and send closes that gap (SMTP has no
two-phase commit); receivers can drop the repeat by its Message-ID, the same for every send of one order.
"""

from __future__ import annotations

import json
import smtplib
import time
from email.message import EmailMessage

from queueworker import PermanentError

from . import db


def message(
    order_id: str, email: str, items: list[dict[str, int | str]], total_cents: int, sender: str
) -> EmailMessage:
    lines = [f"  {item['qty']} x {item['sku']}" for item in items]
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, email
    msg["Subject"] = f"Your order {order_id}"
    msg["Message-ID"] = f"<order-{order_id}@{sender.rpartition('@')[2] or 'localhost'}>"
    msg["X-Shop-Order-Id"] = order_id
    msg.set_content("\n".join(["Thank you for your order.", *lines, f"Total: {total_cents / 100:.2f}", ""]))
    return msg


def send_confirmation(order_id: str) -> bool:
    """Email the order's confirmation; False when an earlier run already sent it."""
    settings = db.ShopSettings()
    with (
        smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout) as smtp,  # QUIT last
        db.database().transaction() as tx,  # committed before the QUIT above
    ):
        order = tx.one("SELECT email, items, total_cents FROM shop_orders WHERE order_id = ?", (order_id,))
        if order is None:
            raise PermanentError(f"no order {order_id}")
        sql = "INSERT INTO shop_confirmations (order_id, sent_at) VALUES (?, ?) ON CONFLICT (order_id) DO NOTHING"
        if not tx.execute(sql, (order_id, time.time())).rowcount:  # waits while another run holds the claim
            return False
        try:
            smtp.send_message(message(order_id, order[0], json.loads(order[1]), order[2], settings.mail_from))
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
            raise PermanentError(f"order {order_id}: the SMTP server refused the confirmation: {exc}") from exc
    return True
