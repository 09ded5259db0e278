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

    # Optional, per broker: its rabbitmq_prometheus endpoint (e.g. http://rabbitmq:15692). When set, queue depth
    # comes from the per-object metrics there (~2.5 s fresher than the management API), and on RabbitMQ 4.x the
    # rates too (its per-queue counters), so a 4.x broker with the management metrics collector off (the official
    # image) needs it. On a cluster, every node's endpoint: comma-separated here, `|`-separated in
    # QW_BROKERS_PROMETHEUS, or one name that resolves to every node (a headless Service).
    rabbitmq_prometheus_url: str = ""  # the `default` broker's
    brokers_prometheus: str = ""  # "name=url,..." or "@/path", like QW_BROKERS

    def broker_urls(self) -> dict[str, str]:
        """Management URLs per broker; several nodes of one broker as `url1|url2` (read through the first that
        answers). QW_RABBITMQ_MANAGEMENT_URL may list them comma-separated."""
        urls = {"default": _nodes(self.rabbitmq_management_url.get_secret_value())}
        urls.update(_named_urls(self.brokers.get_secret_value(), "QW_BROKERS", "http://user:pass@host:15672"))
        return urls

    def prometheus_urls(self) -> dict[str, str]:
        prom = _nodes(self.rabbitmq_prometheus_url)
        urls = {"default": prom} if prom else {}
        urls.update(_named_urls(self.brokers_prometheus, "QW_BROKERS_PROMETHEUS", "http://host:15692"))
        unknown = set(urls) - set(self.broker_urls())
        if unknown:
            raise ValueError(f"QW_BROKERS_PROMETHEUS names brokers not in QW_BROKERS: {', '.join(sorted(unknown))}")
        return urls


def _nodes(raw: str) -> str:
    """`url1, url2` -> `url1|url2`: the nodes of one broker."""
    return "|".join(u.strip() for u in raw.replace("|", ",").split(",") if u.strip())


def _named_urls(raw: str, setting: str, example: str) -> dict[str, str]:
    raw = raw.strip()
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text()
    urls: dict[str, str] = {}
    for item in raw.replace("\n", ",").split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ValueError(f"{setting} entries must look like name={example}")
        urls[name.strip()] = url.strip()
    return urls
