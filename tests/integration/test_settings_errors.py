"""Invalid settings stop each service at start with a message a person can act on (the variable, what is wrong),
exit code 2, no traceback, and never the value of any setting: a validation that looks at all settings at once
would otherwise print every password and API key it was given."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SECRET_PARTS = ["AmqpSecret-7f3a", "DbSecret-91c2", "ApiKeySecret-5d8e0b1c2a", "SmtpSecret-4e6f", "MgmtSecret-2b9d"]
SECRETS = {
    "QW_RABBITMQ_URL": "amqp://app:AmqpSecret-7f3a@rabbitmq:5672/%2F",
    "QW_DATABASE_URL": "postgresql://app:DbSecret-91c2@postgres/qw",
    "QW_API_KEYS": "ApiKeySecret-5d8e0b1c2a:tenant",
    "QW_SMTP_PASSWORD": "SmtpSecret-4e6f",
    "QW_BROKERS": "other=http://ops:MgmtSecret-2b9d@rabbitmq-2:15672",
}


def run(module: str, *args: str, **bad: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QW_")}
    env.update(SECRETS, QW_ENV="prod", **bad)
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("module", "args", "bad", "says"),
    [
        ("qw_api", (), {"QW_MAX_ATTEMPTS": "99"}, "QW_MAX_ATTEMPTS: Input should be less than or equal to 20"),
        ("qw_workers", ("email",), {"QW_RETRY_DELAYS": "[0]"}, "QW_RETRY_DELAYS: retry_delays must be"),
        (
            "qw_operator",
            ("--namespace", "x"),
            {"QW_RABBITMQ_MANAGEMENT_URL": "http://guest:guest@rabbitmq:15672"},
            "QW_RABBITMQ_MANAGEMENT_URL uses the guest account",
        ),
    ],
)
def test_invalid_settings_exit_2_naming_the_variable_and_no_secret(
    module: str, args: tuple[str, ...], bad: dict[str, str], says: str
) -> None:
    proc = run(module, *args, **bad)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert says in out, out
    assert "Traceback" not in out, out
    leaked = [secret for secret in SECRET_PARTS if secret in out]
    assert not leaked, (leaked, out)
