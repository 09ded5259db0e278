"""The operator's broker list: the default from QW_RABBITMQ_MANAGEMENT_URL plus named ones from QW_BROKERS; the shared
`name=value | @file` parser (QW_API_KEYS reads the same way)."""

from __future__ import annotations

from pathlib import Path

import pytest
from qw_core.settings import OperatorSettings, parse_pairs
from qw_operator.endpoints import endpoint_list


def test_brokers_from_env_and_file(tmp_path: Path) -> None:
    s = OperatorSettings(
        rabbitmq_management_url="http://a:b@main:15672", brokers="eu=http://u:p@eu:15672, us=http://us:1"
    )
    assert s.broker_urls() == {"default": "http://a:b@main:15672", "eu": "http://u:p@eu:15672", "us": "http://us:1"}
    f = tmp_path / "brokers"
    f.write_text("# named brokers\nother=http://o:1\n")
    assert OperatorSettings(brokers=f"@{f}").broker_urls()["other"] == "http://o:1"


def test_bad_broker_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="name=http"):
        OperatorSettings(brokers="just-a-url").broker_urls()


def test_prometheus_endpoints_per_broker() -> None:
    s = OperatorSettings(
        rabbitmq_management_url="http://a:b@main:15672",
        brokers="eu=http://u:p@eu:15672",
        rabbitmq_prometheus_url="http://main:15692",
        brokers_prometheus="eu=http://eu:15692",
    )
    assert s.prometheus_urls() == {"default": "http://main:15692", "eu": "http://eu:15692"}
    assert OperatorSettings().prometheus_urls() == {}  # optional: depth then comes from the management API


def test_prometheus_endpoint_for_an_unknown_broker_is_refused() -> None:
    with pytest.raises(ValueError, match="not in QW_BROKERS: us"):
        OperatorSettings(brokers_prometheus="us=http://us:15692").prometheus_urls()


def test_a_cluster_is_listed_node_by_node() -> None:
    s = OperatorSettings(
        rabbitmq_management_url="http://a:b@rmq-0:15672, http://a:b@rmq-1:15672",
        rabbitmq_prometheus_url="http://rmq-0:15692,http://rmq-1:15692",
        brokers="eu=http://u:p@eu-0:15672|http://u:p@eu-1:15672",
        brokers_prometheus="eu=http://eu-nodes:15692",
    )
    assert s.broker_urls() == {
        "default": "http://a:b@rmq-0:15672|http://a:b@rmq-1:15672",
        "eu": "http://u:p@eu-0:15672|http://u:p@eu-1:15672",
    }
    assert s.prometheus_urls() == {"default": "http://rmq-0:15692|http://rmq-1:15692", "eu": "http://eu-nodes:15692"}
    assert endpoint_list(s.broker_urls()["default"]) == ["http://a:b@rmq-0:15672", "http://a:b@rmq-1:15672"]
    assert endpoint_list("http://a:b@one:15672, http://a:b@two:15672") == [
        "http://a:b@one:15672",
        "http://a:b@two:15672",
    ]


@pytest.mark.parametrize(
    ("raw", "sep", "expected"),
    [
        ("", "=", {}),
        ("a=1, b = 2 ,", "=", {"a": "1", "b": "2"}),
        ("# a comment\na=http://x:1?q=v\n\nb=2", "=", {"a": "http://x:1?q=v", "b": "2"}),
        ("k1:acme,k2:http://t", ":", {"k1": "acme", "k2": "http://t"}),
        ("a=1,a=2", "=", {"a": "2"}),
    ],
)
def test_pairs_parse_from_a_list(raw: str, sep: str, expected: dict[str, str]) -> None:
    assert parse_pairs(raw, sep, "QW_X", "name=v") == expected


@pytest.mark.parametrize("raw", ["just-a-name", "=value", "name=", " = "])
def test_a_pair_without_both_sides_is_refused_naming_the_setting(raw: str) -> None:
    with pytest.raises(ValueError, match="QW_X entries must look like name=v"):
        parse_pairs(raw, "=", "QW_X", "name=v")


def test_pairs_come_from_a_mounted_file(tmp_path: Path) -> None:
    f = tmp_path / "pairs"
    f.write_text("# one per line\na=1\nb=2\n")
    assert parse_pairs(f" @{f} ", "=", "QW_X", "name=v") == {"a": "1", "b": "2"}


@pytest.mark.parametrize(
    ("name", "value"),
    [("QW_KUBE_QPS", "-1"), ("QW_KUBE_BURST", "0"), ("QW_KUBE_WRITERS", "0"), ("QW_KUBE_WRITERS", "65"),
     ("QW_KUBE_WRITE_TIMEOUT", "0"), ("QW_STATUS_MIN_INTERVAL_SECONDS", "-5"), ("QW_KUBE_QPS", "fast")],
)  # fmt: skip
def test_write_pacing_out_of_range_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A writer pool of 0 threads or a burst of 0 would hang every write; a negative interval means nothing."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("QW_").lower()):
        OperatorSettings()


def test_write_pacing_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"QW_KUBE_QPS": "40.5", "QW_KUBE_BURST": "60", "QW_KUBE_WRITERS": "4",
                        "QW_STATUS_MIN_INTERVAL_SECONDS": "30"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    s = OperatorSettings()
    assert (s.kube_qps, s.kube_burst, s.kube_writers, s.status_min_interval_seconds) == (40.5, 60, 4, 30)
