"""The operator's settings: `qw_core`'s OperatorSettings plus the named brokers it may read.

Brokers are configured for the operator, not in the QueueWorker: the CR names one (`spec.broker: default`)
and the operator holds the management URLs (with credentials) from its own Secret-fed env or file. That keeps
the operator's RBAC free of `secrets` and stops a namespace user from pointing the operator at any URL.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from qw_core.settings import OperatorSettings


class Settings(OperatorSettings):
    # "name=url,name2=url2" or "@/path/to/file" (one name=url per line). `default` is QW_RABBITMQ_MANAGEMENT_URL
    # unless listed here.
    brokers: SecretStr = SecretStr("")
    health_host: str = "0.0.0.0"
    metrics_host: str = "0.0.0.0"
    management_timeout: float = 10.0
    # kopf peering object (KopfPeering in the watched namespace); empty = standalone (one operator only).
    peering: str = ""
    peering_lifetime: int = 20
    # Watch requests: the server ends each after this long; the client gives up a bit later (stalled watches).
    watch_server_timeout: int = 300
    watch_client_timeout: int = 330

    def broker_urls(self) -> dict[str, str]:
        urls = {"default": self.rabbitmq_management_url.get_secret_value()}
        raw = self.brokers.get_secret_value().strip()
        if raw.startswith("@"):
            raw = Path(raw[1:]).read_text()
        for item in raw.replace("\n", ",").split(","):
            item = item.strip()
            if not item or item.startswith("#"):
                continue
            name, sep, url = item.partition("=")
            if not sep or not name.strip() or not url.strip():
                raise ValueError("QW_BROKERS entries must look like name=http://user:pass@host:15672")
            urls[name.strip()] = url.strip()
        return urls
