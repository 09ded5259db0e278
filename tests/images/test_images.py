"""The Containerfile's three images, built with podman from the local Debian base and run as the chart runs them
(uid 10001, read-only root, /tmp and /data/storage writable, no capabilities): the API and the image worker serve a
real task through the host's RabbitMQ; a worker without a broker stops cleanly on SIGTERM; the operator starts its
CLI; the images hold no build tools or caches; an edited source always reaches the image despite the layer cache;
and the README's image commands run as written."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import time
import urllib.parse
import uuid
from pathlib import Path

import httpx
import images
import pytest
from PIL import Image

from tests.support.images import image_bytes
from tests.support.podman import container, run, stop, storage_volume
from tests.support.util import free_port, http_ok
from tests.support.wait import wait_for

pytestmark = pytest.mark.images

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {
    "api": (["python", "-m", "qw_api"], None),
    "workers": (["python", "-m", "qw_workers"], ["image"]),
    "operator": (["python", "-m", "qw_operator"], None),
}


def test_each_image_runs_its_entry_point_as_uid_10001_with_no_writable_default_outside_data(podman, built) -> None:
    for target, ref in built.refs.items():
        config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", ref).stdout)
        assert config["User"] == "10001:10001"
        assert (config["Entrypoint"], config.get("Cmd")) == ENTRY_POINTS[target]
        env = dict(e.split("=", 1) for e in config["Env"])
        assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["QW_ENV"] == "prod"
        assert env["QW_STORAGE_DIR"] == "/data/storage"
        assert env["QW_DATABASE_URL"] == "sqlite:////data/storage/queueworker.db"


# Run inside each image: what a build leaves behind must not ship. The interpreter's own bundled wheels (ensurepip,
# Debian's python-wheels) belong to the base image and are allowed.
INSPECT = r"""
import importlib.util, json, os, shutil, sys
whls = []
for top in ("/opt", "/data", "/tmp", "/src", "/root", "/home", "/usr/local/lib", "/usr/lib/python3"):
    for d, dirs, files in os.walk(top):
        whls += [os.path.join(d, f) for f in files if f.endswith(".whl") and "ensurepip" not in d]
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "python": sys.executable, "prefix": sys.prefix,
    "installers": [m for m in ("pip", "setuptools", "wheel") if importlib.util.find_spec(m)],
    "tools": [t for t in ("gcc", "cc", "make", "git", "pip", "pip3") if shutil.which(t)],
    "left": [p for p in ("/src", "/wheels", "/root/.cache", "/tmp/requirements.txt", "/run/secrets/ca")
             if os.path.exists(p)],
    "wheels": whls,
    "bytecode": len([f for d, _, fs in os.walk(sys.prefix + "/lib") for f in fs if f.endswith(".pyc")]),
}))
"""


def test_the_images_carry_no_installer_build_tool_cache_or_ca_secret(podman, built) -> None:
    for target, ref in built.refs.items():
        out = run(podman, ref, "-c", INSPECT, opts=["--entrypoint=python"])
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout)
        assert (seen["uid"], seen["gid"]) == (10001, 10001), target
        assert seen["prefix"] == "/opt/venv" and seen["installers"] == [] and seen["tools"] == [], (target, seen)
        assert seen["left"] == [] and seen["wheels"] == [], (target, seen)
        assert seen["bytecode"] > 1000, "byte code compiled at build time: a read-only root cannot write it"


@pytest.fixture
def broker_user(broker, vhost):
    """A non-guest account (the images run with QW_ENV=prod, which refuses guest) with rights on the test vhost."""
    user, password = f"img-{uuid.uuid4().hex[:8]}", secrets.token_hex(12)
    broker.api(f"/api/users/{user}", "PUT", {"password": password, "tags": ""})
    q = urllib.parse.quote(vhost, safe="")
    broker.api(f"/api/permissions/{q}/{user}", "PUT", {"configure": ".*", "write": ".*", "read": ".*"})
    yield f"amqp://{user}:{password}@127.0.0.1:{broker.port}/{q}"
    broker.api(f"/api/users/{user}", "DELETE")


def test_the_api_and_image_worker_images_serve_a_task_as_the_chart_runs_them(podman, built, broker_user, tmp_path):
    """Given the chart's mounts (storage PVC, API keys Secret, /tmp) and a read-only root, when an image goes
    through the API container, the worker container resizes it and the result downloads from the API."""
    storage = storage_volume(tmp_path)
    key = "imgtest-" + secrets.token_hex(12)
    keys = tmp_path / "keys"
    keys.write_text(f"{key}:acme\n")
    keys.chmod(0o644)
    api_port, metrics_port = free_port(), free_port()
    common = {"QW_RABBITMQ_URL": broker_user, "QW_RETRY_DELAYS": "[200]"}
    mounts = [f"{storage}:/data/storage"]
    api_env = {**common, "QW_API_HOST": "127.0.0.1", "QW_API_PORT": str(api_port),
               "QW_API_KEYS": "@/etc/queueworker/api-keys/keys"}  # fmt: skip
    worker_env = {**common, "QW_METRICS_HOST": "127.0.0.1", "QW_METRICS_PORT": str(metrics_port)}
    base = f"http://127.0.0.1:{api_port}"
    with (
        container(
            podman, built.refs["api"], env=api_env, volumes=[*mounts, f"{keys}:/etc/queueworker/api-keys/keys:ro"]
        ),
        container(podman, built.refs["workers"], "image", env=worker_env, volumes=mounts) as worker,
    ):
        start = time.monotonic()
        wait_for("the API container's /healthz", lambda: http_ok(f"{base}/healthz"), 60, 0.2)
        wait_for("the API's /readyz (broker, store)", lambda: http_ok(f"{base}/readyz"), 30, 0.2)
        print(f"API container ready in {time.monotonic() - start:.1f} s")
        wait_for("the worker container's /readyz", lambda: http_ok(f"http://127.0.0.1:{metrics_port}/readyz"), 60, 0.2)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            r = http.post("/v1/images", files={"file": ("cat.jpg", image_bytes("JPEG", (400, 300)), "image/jpeg")},
                          data={"width": "100", "format": "PNG"})  # fmt: skip
            assert r.status_code == 202, r.text

            def final():
                task = http.get(f"/v1/tasks/{r.json()['task_id']}").json()
                return task if task["status"] in ("succeeded", "failed", "dead") else None

            task = wait_for("the task to finish", final, 60, 0.2)
            assert task["status"] == "succeeded", task
            result = http.get(task["result_url"])
            assert result.status_code == 200
            assert Image.open(io.BytesIO(result.content)).size == (100, 75)
        assert stop(podman, worker) == 0, "SIGTERM must stop the worker cleanly"
    names = {p.name for p in storage.iterdir()}
    assert "queueworker.db" in names and len(names) > 2, names  # the store and the upload/result, nowhere else


def test_the_workers_image_without_a_broker_is_alive_unready_and_stops_cleanly(podman, built, tmp_path) -> None:
    assert run(podman, built.refs["workers"], "--help").returncode == 0
    port = free_port()
    env = {"QW_RABBITMQ_URL": f"amqp://nobody:nothing@127.0.0.1:{free_port()}/%2F",
           "QW_METRICS_HOST": "127.0.0.1", "QW_METRICS_PORT": str(port)}  # fmt: skip
    with container(
        podman, built.refs["workers"], "image", env=env, volumes=[f"{storage_volume(tmp_path)}:/data/storage"]
    ) as name:
        wait_for("/healthz", lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60, 0.2)
        assert not http_ok(f"http://127.0.0.1:{port}/readyz")
        start = time.monotonic()
        assert stop(podman, name) == 0
        assert time.monotonic() - start < 10, "SIGTERM while reconnecting must stop the worker at once"


def test_the_operator_image_loads_kopf_and_its_handlers(podman, built) -> None:
    ref = built.refs["operator"]
    out = run(podman, ref, "--help")
    assert out.returncode == 0 and "--all-namespaces" in out.stdout, out.stderr
    # In prod the operator refuses a guest management URL (it opens no AMQP connection, so needs no AMQP URL)...
    out = run(podman, ref)
    assert out.returncode == 2 and "QW_RABBITMQ_MANAGEMENT_URL uses the guest account" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr  # one line per problem, as a person reads it
    # ...and with real credentials gets past settings: kopf and the handlers imported, read-only root.
    out = run(
        podman, ref, opts=[f"--env=QW_RABBITMQ_MANAGEMENT_URL=http://op:op-secret@127.0.0.1:{free_port()}"]
    )  # never opened
    assert out.returncode == 2 and "give --namespace" in out.stderr, out.stderr


def _copy_context(dest: Path) -> Path:
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("Containerfile", ".containerignore", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    for name in images.CONTEXT[1:]:
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    return dest


def test_the_layer_cache_cannot_ship_stale_code(podman, built, tmp_path) -> None:
    """Given a copy of the tree built once, when one source line changes (same size, same mtime), the next cached
    build's image runs the new line."""
    tree = _copy_context(tmp_path)
    module = tree / "api" / "qw_api" / "__init__.py"
    old, new = f"stale-check-{uuid.uuid4().hex}", f"stale-check-{uuid.uuid4().hex}"
    module.write_text(f'"""{old}"""\n')
    mtime = module.stat().st_mtime_ns
    prefix, tags = "localhost/qw-stale-test-", (f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}")
    read = ["-c", "import qw_api; print(qw_api.__doc__)"]
    try:
        first = images.build(images.BASE_REF, root=tree, podman=podman, prefix=prefix, tag=tags[0], targets=("api",),
                             prune=False, force=True)  # fmt: skip
        assert run(podman, first.refs["api"], *read, opts=["--entrypoint=python"]).stdout.strip() == old
        module.write_text(f'"""{new}"""\n')
        os.utime(module, ns=(mtime, mtime))
        second = images.build(images.BASE_REF, root=tree, podman=podman, prefix=prefix, tag=tags[1], targets=("api",),
                              prune=False, force=True)  # fmt: skip
        print(f"stale-cache check: builds of a one-line change {first.seconds['api']} s, {second.seconds['api']} s")
        assert run(podman, second.refs["api"], *read, opts=["--entrypoint=python"]).stdout.strip() == new
    finally:
        podman("rmi", "--force", *(f"{prefix}api:{t}" for t in tags), check=False)


def _readme_image_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Images\n(.*?)^## ", text, re.S | re.M)
    assert section, "README.md has no '## Images' section"
    blocks = re.findall(r"```bash\n(.*?)```", section.group(1), re.S)
    return [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines() if ln.startswith("make ")]


def test_the_readme_image_commands_run_as_written_and_leave_importable_archives(podman, built) -> None:
    commands = _readme_image_commands()
    assert any(c.startswith("make images-save") for c in commands), commands
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # as a user types it
    for cmd in commands:
        out = subprocess.run(cmd, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)  # noqa: S602
        assert out.returncode == 0, f"{cmd}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    manifest = json.loads((images.images_dir() / "images.json").read_text())
    # The tree's tag now (not the session's: locally, someone may have edited the tree meanwhile; CI's cannot change).
    assert manifest["tag"] == images.content_tag(ROOT, images.BASE_REF, podman)
    for target, entry in manifest["images"].items():
        assert entry["ref"] == images.refs(manifest["tag"])[target]
        with tarfile.open(entry["archive"]) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            [image] = json.load(member)
        assert image["RepoTags"] == [entry["ref"]], "ctr -n k8s.io images import names the image from RepoTags"


def test_the_shop_image_from_the_workers_image_loads_its_module_as_the_chart_runs_it(podman, built) -> None:
    """examples/shop/Containerfile, FROM the workers image as a team's own image: same user and entry point, the
    shop's package on PYTHONPATH with QW_APP naming it, importable with a read-only root; built once per content."""
    ref = images.build_app(built.refs["workers"])
    assert images.build_app(built.refs["workers"]) == ref  # cached: the same tag, no second build
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", ref).stdout)
    assert config["User"] == "10001:10001"
    assert (config["Entrypoint"], config.get("Cmd")) == ENTRY_POINTS["workers"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert (env["PYTHONPATH"], env["QW_APP"]) == ("/app/examples", "shop.tasks")
    load = "import os; from qw_core.registry import load_app; print(*load_app(os.environ['QW_APP']).kinds())"
    out = run(podman, ref, "-c", load, opts=["--entrypoint=python"])
    assert (out.returncode, out.stdout.split()) == (0, ["analytics", "confirmation", "inventory"]), out.stderr
    out = run(podman, ref, "--help")  # the worker's own CLI, unchanged
    assert out.returncode == 0 and "--app" in out.stdout, out.stderr
    # The shop's README shows this Containerfile as it is (its comments aside).
    shown = re.search(r"```dockerfile\n(.*?)```", (images.SHOP_DIR / "README.md").read_text(), re.S)
    lines = (images.SHOP_DIR / "Containerfile").read_text().splitlines(keepends=True)
    assert shown and shown.group(1) == "".join(ln for ln in lines if not ln.startswith("#")), "README != Containerfile"
