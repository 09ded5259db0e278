"""The operator's broker list: the default from QW_RABBITMQ_MANAGEMENT_URL plus named ones from QW_BROKERS."""

from __future__ import annotations

from pathlib import Path

import pytest
from qw_operator.config import Settings


def test_brokers_from_env_and_file(tmp_path: Path) -> None:
    s = Settings(rabbitmq_management_url="http://a:b@main:15672", brokers="eu=http://u:p@eu:15672, us=http://us:1")
    assert s.broker_urls() == {"default": "http://a:b@main:15672", "eu": "http://u:p@eu:15672", "us": "http://us:1"}
    f = tmp_path / "brokers"
    f.write_text("# named brokers\nother=http://o:1\n")
    assert Settings(brokers=f"@{f}").broker_urls()["other"] == "http://o:1"


def test_bad_broker_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="name=http"):
        Settings(brokers="just-a-url").broker_urls()
