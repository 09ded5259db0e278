"""QW_RABBITMQ_URL as a list of nodes: parsing, DNS expansion, the per-process connect order (qw_core.brokers)."""

from __future__ import annotations

import collections
import random

import pytest
from pydantic import ValidationError
from qw_core.brokers import connect_order, expand, parse_urls, redact
from qw_core.settings import CommonSettings, WorkerSettings

A = "amqp://u:p@10.0.0.1:5672/%2F"
B = "amqp://u:p@10.0.0.2:5672/%2F"
C = "amqp://u:p@10.0.0.3:5672/%2F"

DNS = {
    "rabbit": ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
    "one": ["10.0.0.9"],
    "v6": ["fd00::1", "10.0.0.1"],
}


def fake_resolver(host: str, port: int) -> list[str]:
    return DNS.get(host, [])


@pytest.mark.parametrize(
    ("raw", "urls"),
    [
        (A, [A]),  # one URL works exactly as before
        (f"{A},{B},{C}", [A, B, C]),
        (f" {A} , {B} ,", [A, B]),  # spaces and a trailing comma
        ("amqps://u:p@rabbit:5671/vh?heartbeat=10", ["amqps://u:p@rabbit:5671/vh?heartbeat=10"]),
    ],
)
def test_parse_urls_keeps_the_written_order(raw: str, urls: list[str]) -> None:
    assert parse_urls(raw) == urls


@pytest.mark.parametrize(
    "raw", ["", " , ", "http://u:p@rabbit:15672", f"{A},rabbit:5672", "amqp:///%2F", "amqp://u:secret@"]
)
def test_parse_urls_refuses_what_is_not_an_amqp_url(raw: str) -> None:
    with pytest.raises(ValueError, match="QW_RABBITMQ_URL") as exc:
        parse_urls(raw)
    assert "secret" not in str(exc.value)  # a password never lands in an error message


@pytest.mark.parametrize(
    ("urls", "expanded"),
    [
        # a name with three addresses: one URL per address, credentials, port, vhost and options kept
        (
            ["amqp://u:p@rabbit:5673/vh?heartbeat=10"],
            [f"amqp://u:p@10.0.0.{i}:5673/vh?heartbeat=10" for i in (1, 2, 3)],
        ),
        (["amqp://rabbit/"], ["amqp://10.0.0.1/", "amqp://10.0.0.2/", "amqp://10.0.0.3/"]),  # no port, no user
        (["amqp://u:p@v6/%2F"], ["amqp://u:p@[fd00::1]/%2F", "amqp://u:p@10.0.0.1/%2F"]),  # IPv6 in brackets
        (["amqp://u:p@one/%2F"], ["amqp://u:p@one/%2F"]),  # one address: left to the client
        (["amqp://u:p@nowhere/%2F"], ["amqp://u:p@nowhere/%2F"]),  # none: the client reports it on connect
        (["amqps://u:p@rabbit/%2F"], ["amqps://u:p@rabbit/%2F"]),  # TLS checks the name: never expanded
        ([A, B], [A, B]),  # IP literals as written
        (["amqp://u:p@rabbit:5672/%2F", A], [A, B, C]),  # a repeat is dropped
    ],
)
def test_expand_gives_one_url_per_node(urls: list[str], expanded: list[str]) -> None:
    assert expand(urls, fake_resolver) == expanded


def test_expand_resolves_a_real_name() -> None:
    assert expand(["amqp://127.0.0.1:5672/"]) == ["amqp://127.0.0.1:5672/"]
    assert set(expand(["amqp://localhost:5672/"])) <= {"amqp://localhost:5672/", "amqp://127.0.0.1:5672/",
                                                       "amqp://[::1]:5672/"}  # fmt: skip


@pytest.mark.parametrize("lost", [A, B, C])
def test_the_node_just_lost_is_tried_last(lost: str) -> None:
    for seed in range(20):
        order = connect_order([A, B, C], random.Random(seed), lost=lost)
        assert sorted(order) == [A, B, C] and order[-1] == lost


def test_one_node_is_retried_even_when_it_was_just_lost() -> None:
    assert connect_order([A], random.Random(1), lost=A) == [A]


def test_processes_spread_over_the_nodes() -> None:
    firsts = collections.Counter(connect_order([A, B, C], random.Random(seed))[0] for seed in range(300))
    assert set(firsts) == {A, B, C} and min(firsts.values()) > 60, firsts


def test_a_name_is_expanded_then_shuffled() -> None:
    order = connect_order(["amqp://u:p@rabbit:5672/%2F"], random.Random(3), resolver=fake_resolver)
    assert sorted(order) == [A, B, C]


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("amqp://u:secret@rabbit:5673/vh", "amqp://rabbit:5673"),
        ("amqps://u:secret@rabbit/vh", "amqps://rabbit:5671"),
        ("amqp://u:secret@[fd00::1]/vh", "amqp://[fd00::1]:5672"),
    ],
)
def test_redact_drops_credentials(url: str, safe: str) -> None:
    assert redact(url) == safe


def test_settings_take_a_list_and_refuse_a_bad_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QW_RABBITMQ_URL", f"{A},{B}")
    assert WorkerSettings().rabbitmq_urls() == [A, B]
    monkeypatch.setenv("QW_RABBITMQ_URL", f"{A},http://rabbit")
    with pytest.raises(ValidationError, match="QW_RABBITMQ_URL"):
        CommonSettings()


def test_prod_refuses_guest_on_any_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QW_ENV", "prod")
    monkeypatch.setenv("QW_RABBITMQ_URL", "amqp://app:s3cret-long@r1:5672/,amqp://app:s3cret-long@r2:5672/")
    assert len(CommonSettings().rabbitmq_urls()) == 2
    monkeypatch.setenv("QW_RABBITMQ_URL", "amqp://app:s3cret-long@r1:5672/,amqp://guest:guest@r2:5672/")
    with pytest.raises(ValidationError, match="guest"):
        CommonSettings()
