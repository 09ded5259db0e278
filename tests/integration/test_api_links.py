"""Links the API hands out (status_url, result_url) as a client behind a TLS-terminating ingress sees them: under
QW_PUBLIC_URL when set; else from the request, whose scheme and host come from X-Forwarded-* headers only when
the peer is a trusted proxy (QW_FORWARDED_ALLOW_IPS). The real `python -m qw_api` process, real broker and store."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from qw_core.settings import ApiSettings

from tests.support.api import api_process

EMAIL = {"to": "a@example.com", "subject": "hi", "text": "x"}
KEY = "key-links-0123456789"


def env(amqp_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "QW_RABBITMQ_URL": amqp_url,
        "QW_DATABASE_URL": f"sqlite:///{tmp_path}/qw.db",
        "QW_STORAGE_DIR": str(tmp_path / "s"),
        "QW_API_KEYS": f"{KEY}:links",
        **extra,
    }


def status_url(base: str, **headers: str) -> str:
    r = httpx.post(f"{base}/v1/emails", json=EMAIL, headers={"Authorization": f"Bearer {KEY}", **headers})
    assert r.status_code == 202, r.text
    return str(r.json()["status_url"])


def test_links_use_the_public_url(amqp_url: str, tmp_path: Path) -> None:
    extra = {"QW_PUBLIC_URL": "https://api.example.com/qw/"}
    with api_process(env(amqp_url, tmp_path, **extra), tmp_path / "api.log") as base:
        url = status_url(base, **{"X-Forwarded-Proto": "http", "X-Forwarded-Host": "evil.example"})
    assert url.startswith("https://api.example.com/qw/v1/tasks/"), url


@pytest.mark.parametrize(("trusted", "scheme"), [("127.0.0.1", "https"), ("10.9.9.9", "http")])
def test_forwarded_headers_count_only_from_trusted_proxies(
    amqp_url: str, tmp_path: Path, trusted: str, scheme: str
) -> None:
    with api_process(env(amqp_url, tmp_path, QW_FORWARDED_ALLOW_IPS=trusted), tmp_path / "api.log") as base:
        url = status_url(base, **{"X-Forwarded-Proto": "https"})
    assert url.startswith(f"{scheme}://"), url


@pytest.mark.parametrize("bad", ["api.example.com", "ftp://api.example.com", "https://api.example.com/?a=1"])
def test_a_public_url_that_is_not_a_base_url_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="http\\(s\\) base URL"):
        ApiSettings(public_url=bad)
