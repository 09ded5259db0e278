import pytest
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
