import io

import pytest
from pydantic import SecretStr, ValidationError
from qw_core.s3storage import expiry_days, secret_value, split_url
from qw_core.settings import CommonSettings
from qw_core.storage import LocalStorage, StorageError


@pytest.mark.parametrize("key", ["../x", "../../etc/passwd", "/etc/passwd", "a/../../x", ""])
def test_keys_cannot_escape_the_root(tmp_path, key):
    s = LocalStorage(tmp_path / "root")
    with pytest.raises(StorageError):
        s.path(key)


def test_generated_keys_ignore_hostile_tenant_names(tmp_path):
    s = LocalStorage(tmp_path)
    key = s.new_key("uploads", "../../evil\\name\x00", "PNG")
    assert key.startswith("uploads/evilname/") and key.endswith(".png")
    s.write(key, b"x")
    assert s.path(key).is_relative_to(tmp_path.resolve())


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    s = LocalStorage(tmp_path)
    s.write("a/b.png", b"data")
    assert s.read("a/b.png") == b"data"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.png"]


def test_a_streamed_write_copies_from_the_files_position_and_a_refused_key_is_reported(tmp_path):
    s = LocalStorage(tmp_path)
    src = io.BytesIO(b"skip" + b"x" * (3 * 1024 * 1024))
    src.seek(4)
    s.write_file("uploads/t/a.png", src)
    blob = s.open("uploads/t/a.png")
    try:
        assert blob.size == 3 * 1024 * 1024 and b"".join(blob.chunks) == b"x" * blob.size
    finally:
        blob.close()
    assert s.delete_many(["../out.png", "uploads/t/a.png", "uploads/t/gone.png"]) == ["../out.png"]
    assert not s.exists("uploads/t/a.png")


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [("s3://qw", "qw", ""), ("s3://qw/", "qw", ""), ("s3://qw/prod", "qw", "prod/"), ("s3://qw/a/b/", "qw", "a/b/")],
)
def test_an_s3_url_names_the_bucket_and_a_prefix_ending_in_a_slash(url, bucket, prefix):
    assert split_url(url) == (bucket, prefix)
    assert CommonSettings(storage_url=url).storage_url == url


@pytest.mark.parametrize("url", ["qw", "s3:/qw", "http://host/qw", "s3://", "s3://qw?x=1", "file:///data"])
def test_a_storage_url_that_is_not_s3_is_refused(url):
    with pytest.raises(ValidationError, match="s3://bucket"):
        CommonSettings(storage_url=url)


@pytest.mark.parametrize(("seconds", "days"), [(1, 2), (86_400, 2), (86_401, 3), (7 * 86_400, 8)])
def test_lifecycle_days_never_come_before_the_retention(seconds, days):
    assert expiry_days(seconds) == days and days * 86_400 > seconds


def test_key_pair_settings_may_name_a_mounted_file(tmp_path):
    (tmp_path / "secret").write_text("s3cr3t-value\n")
    assert secret_value(SecretStr(f"@{tmp_path}/secret")) == "s3cr3t-value"
    assert secret_value(SecretStr("inline")) == "inline"
