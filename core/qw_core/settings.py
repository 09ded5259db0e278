"""One settings object per service, read from `QW_*` environment variables at startup (never at import)."""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from qw_core.brokers import parse_urls
from qw_core.messages import IMAGE_FORMATS
from qw_core.topology import QueueLimits

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "example", "xxx"}


class CommonSettings(BaseSettings):
    # hide_input_in_errors: a validation error must never echo what it was given (a model check sees every
    # setting at once, passwords and API keys included).
    model_config = SettingsConfigDict(env_prefix="QW_", extra="ignore", hide_input_in_errors=True)

    env: Literal["dev", "test", "prod"] = "dev"
    # One amqp(s):// URL, or the nodes of one cluster as several separated by commas (a password's comma as %2C).
    # A plain amqp:// host name with several addresses counts as one node per address. Clients try the nodes in a
    # per-process random order on every (re)connect and fail over to the next; see qw_core.brokers.
    rabbitmq_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F")
    rabbitmq_management_url: SecretStr = SecretStr("http://guest:guest@127.0.0.1:15672")
    database_url: str = "sqlite:///./.run/queueworker.db"
    storage_dir: Path = Path("./.run/storage")
    # Where uploads and results live: "" = the directory storage_dir (make dev; on Kubernetes a ReadWriteMany
    # volume); "s3://bucket/prefix" = an S3-compatible bucket (qw_core.s3storage) with the s3_* settings below.
    storage_url: str = ""
    s3_endpoint_url: str = ""  # "" = AWS's endpoint for s3_region; http(s)://host:port for a self-hosted server
    s3_region: str = "us-east-1"
    # The key pair, each also as "@/path/to/file" (a mounted Secret's key); both empty = boto3's own chain
    # (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE, a web identity token).
    s3_access_key_id: SecretStr = SecretStr("")
    s3_secret_access_key: SecretStr = SecretStr("")
    # Path-style URLs (endpoint/bucket/key), what self-hosted servers serve; false = virtual-hosted (bucket.host).
    s3_path_style: bool = True
    # One S3 call's connect and read timeout, and its attempts (boto3's standard retries, backoff between them):
    # past them the API answers 503 + Retry-After and a worker retries the task through its delay queues.
    s3_timeout_seconds: float = Field(default=5.0, gt=0)
    s3_max_attempts: int = Field(default=3, ge=1, le=10)
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    # Retry policy shared by publisher (topology) and workers.
    max_attempts: int = Field(default=5, ge=1, le=20)
    retry_delays: list[int] = Field(default=[1_000, 5_000, 30_000, 120_000])
    # Each retry waits its delay times a random factor in [1 - jitter, 1 + jitter] (spreads a burst of failures).
    retry_jitter: float = Field(default=0.2, ge=0, le=1)
    delivery_limit: int = Field(default=10, ge=1, description="x-delivery-limit on quorum queues")
    # Queue bounds (qw_core.topology.QueueLimits), declared alike by the API, producers and workers, so every
    # process must have the same values. A work queue (and each delay ladder queue) past either limit refuses publishes:
    # the API answers 503 + Retry-After. Dead-letter queues and the notification log keep their newest messages
    # (the oldest go first past a limit) for their retention time.
    queue_max_length: int = Field(default=100_000, ge=1)
    queue_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    dead_letter_max_length: int = Field(default=10_000, ge=1)
    dead_letter_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    dead_letter_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    notifications_log_max_length: int = Field(default=10_000, ge=1)
    notifications_log_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    notifications_log_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    # The user's task module (SDK kinds, `queueworker.task`), e.g. `shop.tasks`: the API validates
    # POST /v1/tasks/{kind} with its schemas; a worker's `--app` defaults to it.
    app: str = ""
    # How long an idempotency key (the API's Idempotency-Key header, the SDK's `idempotency_key=`) names the task
    # it was first used for; stored with the key when it is first used, so the janitor needs no setting of its own.
    idempotency_seconds: float = Field(default=24 * 3600, gt=0)
    # Every status change this process writes is published to the qw.events exchange (qw_core.events), which the
    # API's live streams (SSE, WebSocket) read. Best effort; off: those streams see only the API's own changes.
    publish_events: bool = True

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, v: str) -> str:
        parsed = urlsplit(v)
        if v and (parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment):
            raise ValueError("must be empty (the directory QW_STORAGE_DIR) or s3://bucket or s3://bucket/prefix")
        return v

    @field_validator("retry_delays")
    @classmethod
    def _delays_positive(cls, v: list[int]) -> list[int]:
        if not v or any(d <= 0 for d in v):
            raise ValueError("retry_delays must be a non-empty list of positive milliseconds")
        return v

    def queue_limits(self) -> QueueLimits:
        return QueueLimits(
            work_max_length=self.queue_max_length,
            work_max_bytes=self.queue_max_bytes,
            dead_max_length=self.dead_letter_max_length,
            dead_max_bytes=self.dead_letter_max_bytes,
            dead_ttl_ms=self.dead_letter_ttl_seconds * 1000,
            log_max_length=self.notifications_log_max_length,
            log_max_bytes=self.notifications_log_max_bytes,
            log_ttl_ms=self.notifications_log_ttl_seconds * 1000,
        )

    def rabbitmq_urls(self) -> list[str]:
        """The broker nodes named by QW_RABBITMQ_URL, as written (qw_core.brokers.connect_order expands them)."""
        return parse_urls(self.rabbitmq_url.get_secret_value())

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_urls(cls, v: SecretStr) -> SecretStr:
        parse_urls(v.get_secret_value())
        return v

    # Which broker URLs this service really uses: only those must not carry the guest account in prod (guest can
    # log in from localhost only). The operator reads the management API and never opens AMQP.
    _broker_urls_used: tuple[str, ...] = ("rabbitmq_url",)

    def broker_urls_used(self) -> tuple[str, ...]:
        return self._broker_urls_used

    @model_validator(mode="after")
    def _no_default_credentials_in_prod(self) -> CommonSettings:
        for field in self.broker_urls_used() if self.env == "prod" else ():
            if "guest:guest@" in getattr(self, field).get_secret_value():
                raise ValueError(f"QW_{field.upper()} uses the guest account; set real credentials in prod")
        return self


class ApiSettings(CommonSettings):
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # "key:tenant,key2:tenant2" or "@/path/to/file" (one key:tenant per line).
    api_keys: SecretStr = SecretStr("")
    max_upload_bytes: int = 20 * 1024 * 1024
    # Every request body but an upload's is JSON: far smaller (emails, notifications, task payloads).
    max_json_bytes: int = Field(default=1024 * 1024, gt=0)
    # Per tenant and API process (qw_api/quotas.py): tasks created per second and the burst allowed (429 +
    # Retry-After past it; a rate <= 0: no limit), per-tenant overrides "tenant=rate/burst,...", and event streams
    # open at once per tenant (429) and in all (503).
    tenant_rate: float = 200.0
    tenant_burst: int = Field(default=2000, ge=1)
    tenant_limits: str = ""
    max_streams_per_tenant: int = Field(default=50, ge=1)
    max_streams: int = Field(default=1000, ge=1)
    max_image_pixels: int = 40_000_000
    allowed_formats: list[str] = Field(default_factory=lambda: list[str](IMAGE_FORMATS))
    publish_timeout: float = 5.0
    # Largest AMQP message body the API publishes. RabbitMQ 4.x refuses bodies over its max_message_size (16 MiB
    # by default; 3.10: 128 MiB; 512 MiB at most) by closing the whole channel, failing every publish in flight.
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0, le=512 * 1024 * 1024)
    retry_after_seconds: int = 5
    # Event streams (qw_api/push.py): pushed from the broker's qw.events (events_push, the default) or, as the
    # fallback, by reading the store every sse_poll_interval seconds per stream. A keep-alive comment after
    # sse_keepalive_seconds of silence; each subscriber holds at most events_buffer changes not yet sent (past
    # that it is resynced from the store, or a tenant-wide stream is ended with `event: overflow`).
    events_push: bool = True
    sse_poll_interval: float = 0.2
    sse_keepalive_seconds: float = Field(default=15.0, gt=0)
    events_buffer: int = Field(default=256, ge=1)
    # This process's event queue is bound per tenant (`<tenant>.#`) while it has a subscriber of that tenant, and
    # events_unbind_seconds after the last one left. A WebSocket is closed after ws_max_seconds (code 4000,
    # "reconnect": the page reconnects), as an SSE stream ends after 900 s. events_trace (bench and debugging only)
    # adds an SSE comment `: hub <unix time>` before each pushed task frame: when this process received the change.
    events_unbind_seconds: float = Field(default=5.0, ge=0)
    ws_max_seconds: float = Field(default=3600.0, gt=0)
    events_trace: bool = False
    # What image uploads may hold at once in one API process (qw_api/uploads.py): bodies being received and spooled
    # (their Content-Length), and what checking images allocates (never a full decode: qw_core/images.py; the name
    # is kept from when the API decoded fully); a request that waits longer than
    # upload_wait_seconds for room gets 503 + Retry-After. Sized for the chart's 512Mi API limit.
    upload_body_budget_bytes: int = Field(default=48 * 1024 * 1024, gt=0)
    decode_budget_bytes: int = Field(default=192 * 1024 * 1024, gt=0)
    upload_wait_seconds: float = Field(default=10.0, gt=0)
    # Links in answers (status_url, result_url). Set it behind a TLS-terminating ingress
    # (https://api.example.com, with a path prefix if any), or links come back as http:// and clients send their
    # key in clear. "" = built from the request, whose scheme and host come from X-Forwarded-* only when the peer
    # is one of forwarded_allow_ips (uvicorn's proxy headers; "*" = any, only when nothing else can reach the API).
    public_url: str = ""
    forwarded_allow_ips: str = "127.0.0.1"
    # GET /v1/tasks/{id}/result with S3 storage: 0 = the API streams the object; N > 0 = after the tenant check, a
    # 302 to a presigned URL valid N seconds (the client downloads from the store itself). Presigned URLs name
    # s3_public_endpoint_url when set (the address clients reach; the API may use an in-cluster one).
    result_redirect_seconds: int = Field(default=0, ge=0, le=7 * 24 * 3600)
    s3_public_endpoint_url: str = ""

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        parsed = urlsplit(v)
        if v and (parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment):
            raise ValueError("must be an http(s) base URL like https://api.example.com (a path prefix is allowed)")
        return v.rstrip("/")

    def tenant_overrides(self) -> dict[str, tuple[float, int]]:
        out = {}
        for tenant, limit in parse_pairs(self.tenant_limits, "=", "QW_TENANT_LIMITS", "tenant=rate/burst").items():
            rate, _, burst = limit.partition("/")
            try:
                out[tenant] = (float(rate), int(burst or max(1, math.ceil(float(rate)))))
            except ValueError:
                raise ValueError(
                    f"QW_TENANT_LIMITS: {tenant}={limit} is not rate/burst (e.g. {tenant}=50/500)"
                ) from None
        return out

    def tenant_keys(self) -> dict[str, str]:
        keys = parse_pairs(self.api_keys.get_secret_value(), ":", "QW_API_KEYS", "key:tenant")
        for key in keys:
            if self.env == "prod" and (key.lower() in PLACEHOLDER_SECRETS or len(key) < 16):
                raise ValueError("QW_API_KEYS holds a placeholder or short key; use at least 16 random chars")
        return keys


class WorkerSettings(CommonSettings):
    metrics_port: int = 9100
    metrics_host: str = "127.0.0.1"
    prefetch: int = Field(default=4, ge=1)
    concurrency: int = Field(default=1, ge=1)
    grace_period: float = 25.0
    heartbeat: int = Field(default=10, ge=5, le=60)
    max_image_pixels: int = 40_000_000
    max_output_side: int = 4096
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_from: str = "queueworker@localhost"
    smtp_timeout: float = 15.0
    # An email whose earlier attempt began sending and never recorded the outcome (a crash, or the store down
    # mid-send) may have gone out. False: never sent again (at most once; the task ends dead saying so). True:
    # sent again once the claim's lease has passed (at least once).
    email_resend_in_doubt: bool = False
    # Mails a tenant may send per window (a minute by default), counted over every email worker (one row per tenant
    # and window in the store); past it a mail is deferred through the retry queues without using one of its
    # attempts, so one tenant's burst neither fails its own mails nor holds the workers other tenants need. 0: no
    # limit. Per-tenant overrides: "tenant=mails_per_window,...".
    email_tenant_rate: int = Field(default=0, ge=0)
    email_tenant_limits: str = ""
    email_rate_window_seconds: int = Field(default=60, ge=1, le=3600)
    # An SDK task's return value is stored as JSON in the status store: at most this many bytes of it.
    max_result_bytes: int = Field(default=64 * 1024, gt=0, le=16 * 1024 * 1024)

    def email_rate(self, tenant: str) -> int:
        """The tenant's mails per window (0: no limit)."""
        return _email_overrides(self.email_tenant_limits).get(tenant, self.email_tenant_rate)

    @field_validator("email_tenant_limits")
    @classmethod
    def _email_limits(cls, v: str) -> str:
        for tenant, limit in _email_limit_pairs(v).items():
            if not limit.isdigit():
                raise ValueError(f"{tenant}={limit}: the limit must be a whole number of mails per window (0: none)")
        return v


def _email_limit_pairs(raw: str) -> dict[str, str]:
    return parse_pairs(raw, "=", "QW_EMAIL_TENANT_LIMITS", "tenant=mails_per_window")


@functools.lru_cache(maxsize=8)
def _email_overrides(raw: str) -> dict[str, int]:
    """QW_EMAIL_TENANT_LIMITS parsed once per value (`email_rate` runs for every mail; an @file is read once)."""
    return {tenant: int(limit) for tenant, limit in _email_limit_pairs(raw).items()}


class JanitorSettings(CommonSettings):
    """`python -m qw_workers janitor` (qw_workers/janitor.py): what is kept, and for how long."""

    # A task row, its result (file or JSON) and its side-effect rows are removed this long after the task ended
    # (succeeded, failed or dead); a source upload as soon as its task ended.
    retention_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    # A row still `pending` this long after it was created was never published (the API died between the row and
    # the publish; a live publish is confirmed or withdrawn within QW_PUBLISH_TIMEOUT): it is failed with a reason.
    pending_timeout_seconds: float = Field(default=600, ge=60)
    janitor_batch_size: int = Field(default=500, ge=1, le=10_000)
    janitor_interval_seconds: float = Field(default=60, gt=0)

    def broker_urls_used(self) -> tuple[str, ...]:
        # The broker only carries the janitor's change events: without them it opens no connection.
        return self._broker_urls_used if self.publish_events else ()


class ClientSettings(CommonSettings):
    """What a producer process (`queueworker.Client`, `task.send()`) reads: the broker, the store, its tenant."""

    tenant: str = Field(default="default", min_length=1, max_length=200)
    heartbeat: int = Field(default=30, ge=5, le=600)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0, le=512 * 1024 * 1024)


class OperatorSettings(CommonSettings):
    """The operator's settings, `python -m qw_operator` and `python -m qw_operator.local` alike.

    Brokers are configured for the operator, not in the QueueWorker: the CR names one (`spec.broker: default`)
    and the operator holds the management URLs (with credentials) from its own Secret-fed env or file. That keeps
    the operator's RBAC free of `secrets` and stops a namespace user from pointing the operator at any URL.
    """

    _broker_urls_used = ("rabbitmq_management_url",)
    namespace: str = ""
    metrics_port: int = 9200
    health_port: int = 8080
    default_interval: float = 5.0
    # "name=url,name2=url2" or "@/path/to/file" (one name=url per line). `default` is QW_RABBITMQ_MANAGEMENT_URL
    # unless listed here.
    brokers: SecretStr = SecretStr("")
    health_host: str = "0.0.0.0"
    metrics_host: str = "0.0.0.0"
    management_timeout: float = 10.0
    # Depth is read this many times per (smallest) pollingInterval; a QueueWorker is decided at its interval and
    # also on any read that shows its queue changed. Each read halves the wait for the next one after a burst (the
    # largest part of burst -> replicas at 5,000 QueueWorkers), at one more Prometheus scrape per read.
    broker_reads_per_interval: int = Field(default=2, ge=1, le=4)
    # kopf peering object (KopfPeering in the watched namespace); empty = standalone (one operator only).
    peering: str = ""
    peering_lifetime: int = 20
    # Watch requests: the server ends each after this long; the client gives up a bit later (stalled watches).
    watch_server_timeout: int = 300
    watch_client_timeout: int = 330
    # A busy QueueWorker's status (depth, rates, lastActiveTime) is written at most this often; replicas,
    # conditions and scale decisions at once. The persisted lastActiveTime is exact when a queue goes idle.
    status_min_interval_seconds: float = Field(default=10.0, ge=0)
    # Client-side pacing of the operator's own writes (replicas, status, Deployments), retries included: one
    # token bucket, replica changes first. 0 = unpaced. The defaults write 5,000 first statuses in under a
    # minute with a few requests in flight, well below what makes an apiserver answer 429.
    kube_qps: float = Field(default=150.0, ge=0)
    kube_burst: int = Field(default=300, ge=1)
    # Writes in flight at once (threads of their own): a start-up's first statuses are bound by this over the
    # apiserver's latency (measured: 1,000 first statuses took 87 s with 8 on a loaded test apiserver, ~0.7 s a
    # write), far below its in-flight limits (200 mutating requests by default); the token bucket paces them.
    kube_writers: int = Field(default=32, ge=1, le=64)
    # Seconds one Kubernetes write may take before it is given up and retried (the writes are idempotent merge
    # patches): a connection the apiserver or a proxy dropped silently would otherwise hold a writer forever, and
    # with all of them held no replica change goes out. Measured: 0.45 s a status write at 5,000 first statuses.
    kube_write_timeout: float = Field(default=20.0, gt=0, le=600)

    # Optional, per broker: its rabbitmq_prometheus endpoint (e.g. http://rabbitmq:15692). When set, queue depth
    # comes from the per-object metrics there (~2.5 s fresher than the management API), and on RabbitMQ 4.x the
    # rates too (its per-queue counters), so a 4.x broker with the management metrics collector off (the official
    # image) needs it. On a cluster, every node's endpoint: comma-separated here, `|`-separated in
    # QW_BROKERS_PROMETHEUS, or one name that resolves to every node (a headless Service).
    rabbitmq_prometheus_url: str = ""  # the `default` broker's
    brokers_prometheus: str = ""  # "name=url,..." or "@/path", like QW_BROKERS
    # ServiceAccounts a QueueWorker's pod template may name (comma-separated). The operator creates the worker
    # Deployment itself, so without this anyone allowed to create a QueueWorker could run pods as any account of
    # the namespace (the operator's own included). A template that names none runs as `default`.
    template_service_accounts: str = "default"

    def allowed_service_accounts(self) -> set[str]:
        return {a.strip() for a in self.template_service_accounts.split(",") if a.strip()}

    def broker_urls(self) -> dict[str, str]:
        """Management URLs per broker; several nodes of one broker as `url1|url2` (read through the first that
        answers). QW_RABBITMQ_MANAGEMENT_URL may list them comma-separated."""
        urls = {"default": _nodes(self.rabbitmq_management_url.get_secret_value())}
        urls.update(parse_pairs(self.brokers.get_secret_value(), "=", "QW_BROKERS", "name=http://user:pass@host:15672"))
        return urls

    def prometheus_urls(self) -> dict[str, str]:
        prom = _nodes(self.rabbitmq_prometheus_url)
        urls = {"default": prom} if prom else {}
        urls.update(parse_pairs(self.brokers_prometheus, "=", "QW_BROKERS_PROMETHEUS", "name=http://host:15692"))
        unknown = set(urls) - set(self.broker_urls())
        if unknown:
            raise ValueError(f"QW_BROKERS_PROMETHEUS names brokers not in QW_BROKERS: {', '.join(sorted(unknown))}")
        return urls


def _nodes(raw: str) -> str:
    """`url1, url2` -> `url1|url2`: the nodes of one broker."""
    return "|".join(u.strip() for u in raw.replace("|", ",").split(",") if u.strip())


def parse_pairs(raw: str, sep: str, setting: str, example: str) -> dict[str, str]:
    """`a<sep>b,c<sep>d`, or `@/path/to/file` (a mounted Secret) with one pair per line and `#` comments: the format
    of QW_API_KEYS and QW_BROKERS. An entry without the separator or with an empty side is refused, naming the
    setting and an `example` of a good entry."""
    raw = raw.strip()
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text()
    pairs: dict[str, str] = {}
    for item in raw.replace("\n", ",").split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        name, found, value = item.partition(sep)
        if not found or not name.strip() or not value.strip():
            raise ValueError(f"{setting} entries must look like {example}")
        pairs[name.strip()] = value.strip()
    return pairs


S = TypeVar("S", bound=CommonSettings)


def load(cls: type[S]) -> S:
    """A service's settings from the environment. Invalid settings end the process with one line per problem,
    naming the variable (exit code 2), never a traceback or a value (it may be a password)."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_context=False, include_input=False):
            name = "QW_" + "_".join(str(part) for part in err["loc"]).upper() if err["loc"] else "settings"
            problems.append(f"  {name}: {err['msg'].removeprefix('Value error, ')}")
        print(f"invalid {cls.__name__}:\n" + "\n".join(problems), file=sys.stderr)
        raise SystemExit(2) from None
