import pytest
from pydantic import ValidationError
from qw_core.settings import ApiSettings, CommonSettings, OperatorSettings


def test_settings_come_from_qw_env(monkeypatch):
    monkeypatch.setenv("QW_API_PORT", "9123")
    monkeypatch.setenv("QW_API_KEYS", "k1:acme, k2:globex")
    s = ApiSettings()
    assert s.api_port == 9123
    assert s.tenant_keys() == {"k1": "acme", "k2": "globex"}


def test_keys_can_come_from_a_mounted_file(tmp_path, monkeypatch):
    f = tmp_path / "keys"
    f.write_text("# comment\nabc:one\ndef:two\n")
    monkeypatch.setenv("QW_API_KEYS", f"@{f}")
    assert ApiSettings().tenant_keys() == {"abc": "one", "def": "two"}


def test_malformed_key_entry_is_refused(monkeypatch):
    monkeypatch.setenv("QW_API_KEYS", "justakey")
    with pytest.raises(ValueError, match="key:tenant"):
        ApiSettings().tenant_keys()


def test_prod_refuses_placeholder_keys_and_guest(monkeypatch):
    monkeypatch.setenv("QW_ENV", "prod")
    monkeypatch.setenv("QW_RABBITMQ_URL", "amqp://app:s3cret-long@rabbit:5672/")
    monkeypatch.setenv("QW_API_KEYS", "changeme:acme")
    with pytest.raises(ValueError, match="placeholder"):
        ApiSettings().tenant_keys()
    monkeypatch.setenv("QW_RABBITMQ_URL", "amqp://guest:guest@rabbit:5672/")
    with pytest.raises(ValidationError, match="guest"):
        CommonSettings()


def test_api_refuses_to_start_without_any_key(monkeypatch):
    from qw_api.main import create_app

    monkeypatch.setenv("QW_API_KEYS", "")
    with pytest.raises(ValueError, match="QW_API_KEYS is empty"):
        create_app(ApiSettings())


def test_the_operator_in_prod_needs_no_amqp_url_but_a_real_management_account(monkeypatch):
    """The plain manifest's operator (QW_ENV=prod, management URL from a Secret, no QW_RABBITMQ_URL: it never
    opens AMQP) crashed at start-up on the guest default of an URL it does not use."""
    from qw_core.settings import OperatorSettings

    monkeypatch.setenv("QW_ENV", "prod")
    monkeypatch.delenv("QW_RABBITMQ_URL", raising=False)
    monkeypatch.setenv("QW_RABBITMQ_MANAGEMENT_URL", "http://qw:s3cret-long@rabbit:15672")
    assert OperatorSettings().env == "prod"
    monkeypatch.setenv("QW_RABBITMQ_MANAGEMENT_URL", "http://guest:guest@rabbit:15672")
    with pytest.raises(ValidationError, match="QW_RABBITMQ_MANAGEMENT_URL uses the guest account"):
        OperatorSettings()


def test_the_janitor_in_prod_needs_a_real_amqp_account_only_when_it_publishes_its_changes(monkeypatch):
    """The chart's janitor CronJob (QW_ENV=prod) failed every run on the guest default of QW_RABBITMQ_URL: it
    publishes the changes it makes to qw.events, so the chart gives it the broker's Secret; with
    QW_PUBLISH_EVENTS=false it opens no connection and needs none."""
    from qw_core.settings import JanitorSettings

    monkeypatch.setenv("QW_ENV", "prod")
    monkeypatch.delenv("QW_RABBITMQ_URL", raising=False)
    with pytest.raises(ValidationError, match="QW_RABBITMQ_URL uses the guest account"):
        JanitorSettings()
    monkeypatch.setenv("QW_PUBLISH_EVENTS", "false")
    assert JanitorSettings().publish_events is False
    monkeypatch.setenv("QW_PUBLISH_EVENTS", "true")
    monkeypatch.setenv("QW_RABBITMQ_URL", "amqp://qw:s3cret-long@rabbit:5672/%2F")
    assert JanitorSettings().publish_events is True


def test_a_validation_error_never_echoes_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model-level check sees every setting at once; its error must not print them (passwords, API keys)."""
    monkeypatch.setenv("QW_ENV", "prod")
    monkeypatch.setenv("QW_RABBITMQ_MANAGEMENT_URL", "http://guest:guest@rabbitmq:15672")
    monkeypatch.setenv("QW_BROKERS", "other=http://ops:MgmtSecret-2b9d@rabbitmq-2:15672")
    with pytest.raises(ValidationError) as err:
        OperatorSettings()
    assert "guest account" in str(err.value)
    assert "MgmtSecret" not in str(err.value) and "input_value" not in str(err.value)  # no part of any input
