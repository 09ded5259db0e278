"""The chart with `storage.type: s3` (ci/s3-values.yaml), rendered by the real `helm template`: no volume claim and
no storage volume anywhere, the same S3 settings in every pod that reads or writes uploads and results, the key
pair only as files of the existing Secret, and a schema that refuses what cannot work."""

from __future__ import annotations

import pytest

from tests.conftest import _need
from tests.support.chart import CHART, MINIMAL, helm, helm_binary, pod_specs, render, template_args

S3_VALUES = CHART / "ci" / "s3-values.yaml"


@pytest.fixture(scope="module", autouse=True)
def _helm_present() -> None:
    if helm_binary() is None:
        _need("helm", FileNotFoundError("helm not built: make cluster-bin"))


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return render(S3_VALUES)


def _env(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _storage_users(objects: list[dict]) -> dict[str, dict]:
    """The containers that read or write uploads and results: the API, the image worker, the janitor."""
    users = {}
    for name, spec in pod_specs(objects):
        if name.endswith(("-api", "-image", "-janitor")):
            [container] = spec["containers"]
            users[name] = (spec, container)
    return users


def test_s3_storage_creates_no_claim_and_mounts_no_storage_volume(objects) -> None:
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert any(o["kind"] == "PersistentVolumeClaim" for o in render(MINIMAL))  # the volume stays the default
    for name, spec in pod_specs(objects):
        volumes = spec.get("volumes", [])
        assert not [v for v in volumes if "persistentVolumeClaim" in v], name


def test_every_pod_that_uses_storage_gets_the_bucket_and_the_key_pair_as_files(objects) -> None:
    users = _storage_users(objects)
    assert len(users) == 3, sorted(users)
    for name, (spec, container) in users.items():
        env = _env(container)
        assert env["QW_STORAGE_URL"] == "s3://queueworker/prod", name
        assert env["QW_S3_ENDPOINT_URL"] == "http://seaweedfs-s3.storage.svc:8333"
        assert env["QW_S3_PATH_STYLE"] == "true" and env["QW_S3_REGION"] == "us-east-1"
        assert env["QW_S3_ACCESS_KEY_ID"] == "@/etc/queueworker/s3/access-key-id"
        assert env["QW_S3_SECRET_ACCESS_KEY"] == "@/etc/queueworker/s3/secret-access-key"
        assert "QW_STORAGE_DIR" not in env
        [secret] = [v for v in spec["volumes"] if v["name"] == "s3-credentials"]
        assert secret["secret"]["secretName"] == "queueworker-s3"
        mount = {"name": "s3-credentials", "mountPath": "/etc/queueworker/s3", "readOnly": True}
        assert mount in container["volumeMounts"]
    api_env = _env(next(c for n, (_, c) in users.items() if n.endswith("-api")))
    assert api_env["QW_RESULT_REDIRECT_SECONDS"] == "300"
    assert api_env["QW_S3_PUBLIC_ENDPOINT_URL"] == "https://files.example.com"


def test_the_workers_that_never_touch_storage_keep_a_scratch_dir(objects) -> None:
    [email] = [spec for name, spec in pod_specs(objects) if name.endswith("-email")]
    env = _env(email["containers"][0])
    assert env["QW_STORAGE_DIR"] == "/tmp/storage" and "QW_STORAGE_URL" not in env
    assert not [v for v in email["volumes"] if v["name"] == "s3-credentials"]


def test_without_a_secret_the_pods_identity_is_used_and_no_key_is_set() -> None:
    objects = render(S3_VALUES, sets=("storage.s3.existingSecret=",))
    for name, (spec, container) in _storage_users(objects).items():
        env = _env(container)
        assert "QW_S3_ACCESS_KEY_ID" not in env and "QW_S3_SECRET_ACCESS_KEY" not in env, name
        assert not [v for v in spec["volumes"] if v["name"] == "s3-credentials"]


@pytest.mark.parametrize(
    "bad",
    ["storage.type=gcs", "storage.s3.bucket=", "storage.s3.bucket=Not_A_Bucket", "storage.s3.endpoint=ftp://x"],
)
def test_the_schema_or_the_templates_refuse_what_cannot_work(bad: str) -> None:
    r = helm(*template_args(S3_VALUES), "--set", bad, check=False)
    assert r.returncode != 0 and ("storage" in r.stderr), r.stderr
