"""The container images: a local Debian base, the three images of the Containerfile, their archives.

    python3 scripts/images.py base                  # localhost/qw-base:bookworm from mmdebstrap (cached by recipe)
    python3 scripts/images.py build [--python-image IMAGE]   # api, workers, operator -> localhost/queueworker-*:TAG
    python3 scripts/images.py save  [--python-image IMAGE] [--out DIR]   # + `podman save` archives, paths printed
    python3 scripts/images.py bench [--python-image IMAGE]   # cold (empty store) and warm builds, sizes
    python3 scripts/images.py shop  [--python-image IMAGE] [--save]   # examples/shop's workers image, FROM ours

The base: where no container registry is reachable, `mmdebstrap` makes a minimal bookworm root with Debian's
python3 (3.11) and `podman import` turns it into an image; it is remade only when its recipe (below) changes.
A `--python-image` of localhost/qw-base:* makes it first. Without one, the Containerfile's default (an official
slim Python image) is pulled.

The tag is a hash of what the build reads (the Containerfile, the files it copies, the base image), so an edited
tree gets a new tag and an unchanged one keeps it. Every podman call gets this project's containers.conf
(CONTAINERS_CONF: runc, explicit ulimits), never /etc's. pip inside the build gets the host's CA bundle as a build
secret (mounted for that RUN only, never in a layer). Builds use the host's network (no CNI bridge or iptables).

Archives (`save`): one docker-archive per image in .images/ (QW_IMAGES_DIR to move it), with images.json naming
each image and its archive, for `ctr -n k8s.io images import` on a kubelet node; `archives()` returns the paths.
An image of your own task module (`shop`): the workers image plus a module, from the module's own Containerfile
(examples/shop/Containerfile, `FROM ${WORKERS_IMAGE}`), as a team builds theirs; tagged by a hash of the workers
image and what that Containerfile copies, so it is rebuilt only when either changes.
Stdlib only: the tests and `make images` share it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "Containerfile"
CONTAINERS_CONF = ROOT / "scripts" / "containers.conf"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TARGETS = ("api", "workers", "operator")
REPO_PREFIX = "localhost/queueworker-"
# What the Containerfile copies, hashed for the tag (byte code and build leftovers excluded, as .containerignore).
CONTEXT = ("pyproject.toml", "core", "api", "workers", "operator", "sdk")
IGNORED_PARTS = ("__pycache__",)
IGNORED_SUFFIXES = (".pyc", ".egg-info")
SHOP_DIR = ROOT / "examples" / "shop"
SHOP_REPO = "localhost/shop-workers"
KEEP_TAGS = 3  # older tags of our images are removed by `build`: every source change makes a new ~240 MB layer

BASE_REF = "localhost/qw-base:bookworm"
BASE_LABEL = "dev.queueworker.base-recipe"
# The local base: what the Containerfile needs from a Python image (python3 >= 3.11 with venv, CA certificates),
# no documentation, no apt lists. Changing anything here remakes it.
BASE_RECIPE = {
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["python3", "python3-venv", "ca-certificates"],
    "dpkgopt": [f"path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")],
    "customize": 'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*',
    "changes": ["ENV=LANG=C.UTF-8", 'CMD=["/usr/bin/python3"]'],
}


def cache_dir() -> Path:
    d = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "queueworker" / "images"
    d.mkdir(parents=True, exist_ok=True)
    return d


def images_dir() -> Path:
    return Path(os.environ.get("QW_IMAGES_DIR", ROOT / ".images"))


def default_python_image(containerfile: Path = CONTAINERFILE) -> str:
    m = re.search(r"^ARG PYTHON_IMAGE=(\S+)", containerfile.read_text(), re.M)
    if not m:
        raise SystemExit(f"{containerfile} declares no default ARG PYTHON_IMAGE")
    return m.group(1)


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Concurrent callers (make and a test session, two developers) wait rather than build the same thing twice."""
    with open(cache_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class Podman:
    """podman with this project's containers.conf; `root` (or QW_PODMAN_ROOT, with QW_PODMAN_RUNROOT) picks a
    private storage instead of the default /var/lib/containers, as the cold benchmark does."""

    def __init__(self, root: Path | None = None, runroot: Path | None = None) -> None:
        if shutil.which("podman") is None:
            raise SystemExit("podman is not installed: bash scripts/install-system-deps.sh images")
        if root is None and os.environ.get("QW_PODMAN_ROOT"):
            root = Path(os.environ["QW_PODMAN_ROOT"])
            runroot = Path(os.environ.get("QW_PODMAN_RUNROOT", "/tmp/qw-podman-run"))  # at most 50 characters
        self.store = ["--root", str(root), "--runroot", str(runroot or root / "run")] if root else []
        self.env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}

    def __call__(self, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["podman", *self.store, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
        return out

    def exists(self, ref: str) -> bool:
        return self("image", "exists", ref, check=False).returncode == 0

    def inspect(self, ref: str, fmt: str) -> str:
        return self("image", "inspect", "--format", fmt, ref).stdout.strip()

    def size(self, ref: str) -> int:
        return int(self.inspect(ref, "{{.Size}}"))


# --- the base ------------------------------------------------------------------------------------------------


def base_recipe_hash() -> str:
    return hashlib.sha256(json.dumps(BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:16]


def ensure_base(podman: Podman | None = None, ref: str = BASE_REF, force: bool = False) -> str:
    """The local Debian base image, made with mmdebstrap (~30 s) unless one of this recipe exists."""
    podman = podman or Podman()
    want = base_recipe_hash()

    def current() -> bool:
        label = '{{ index .Labels "' + BASE_LABEL + '" }}'
        return podman.exists(ref) and podman.inspect(ref, label) == want

    if not force and current():
        return ref
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("mmdebstrap is not installed: bash scripts/install-system-deps.sh images")
    with _locked("base"):
        if not force and current():
            return ref
        r = BASE_RECIPE
        with tempfile.TemporaryDirectory(prefix="qw-base-") as tmp:
            tar = Path(tmp) / "base.tar"
            cmd = ["mmdebstrap", "--quiet", f"--variant={r['variant']}", "--include=" + ",".join(r["include"])]
            cmd += [f"--dpkgopt={o}" for o in r["dpkgopt"]]
            cmd += [f"--customize-hook={r['customize']}", str(r["suite"]), str(tar)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"mmdebstrap failed:\n{out.stderr[-3000:]}")
            changes = [*r["changes"], f"LABEL={BASE_LABEL}={want}"]
            podman("import", *[a for c in changes for a in ("--change", c)], str(tar), ref)
    return ref


# --- the images ----------------------------------------------------------------------------------------------


def _context_files(root: Path) -> Iterator[Path]:
    for name in CONTEXT:
        p = root / name
        if p.is_file():
            yield p
            continue
        for f in sorted(p.rglob("*")):
            rel = f.relative_to(root)
            if f.is_file() and not any(part in IGNORED_PARTS or part.endswith(IGNORED_SUFFIXES) for part in rel.parts):
                yield f


def content_tag(root: Path, python_image: str, podman: Podman) -> str:
    """A hash of what the build reads: the Containerfile, .containerignore, the copied files, and the base (by
    image id when it is here, so a remade base makes a new tag)."""
    h = hashlib.sha256()
    base_id = podman.inspect(python_image, "{{.Id}}") if podman.exists(python_image) else python_image
    h.update(f"{python_image}\0{base_id}\0".encode())
    for f in [root / "Containerfile", root / ".containerignore", *_context_files(root)]:
        if f.exists():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return "c" + h.hexdigest()[:15]


def refs(tag: str, prefix: str = REPO_PREFIX, targets: tuple[str, ...] = TARGETS) -> dict[str, str]:
    return {t: f"{prefix}{t}:{tag}" for t in targets}


@dataclass
class Built:
    tag: str
    python_image: str
    refs: dict[str, str]  # target -> image reference
    seconds: dict[str, float]  # target -> build time
    sizes: dict[str, int]  # target -> bytes


def build(
    python_image: str | None = None,
    root: Path = ROOT,
    podman: Podman | None = None,
    prefix: str = REPO_PREFIX,
    tag: str | None = None,
    prune: bool = True,
    force: bool = False,
    targets: tuple[str, ...] = TARGETS,
) -> Built:
    """Build the three targets (the shared stages once, then from the layer cache) and tag them. Images already
    tagged with this content tag are what this tree builds: kept as they are unless `force` (then podman's layer
    cache decides, as in the cold/warm benchmark and the stale-cache test)."""
    podman = podman or Podman()
    python_image = python_image or default_python_image(root / "Containerfile")
    if python_image.startswith("localhost/qw-base:"):
        ensure_base(podman, python_image)
    tag = tag or content_tag(root, python_image, podman)
    names = refs(tag, prefix, targets)
    seconds: dict[str, float] = {}
    if not force and all(podman.exists(r) for r in names.values()):
        return Built(tag, python_image, names, dict.fromkeys(names, 0.0), {t: podman.size(r) for t, r in names.items()})
    args = ["build", "--layers", "--network=host", "--build-arg", f"PYTHON_IMAGE={python_image}"]
    if CA_BUNDLE.exists():
        args += ["--secret", f"id=ca,src={CA_BUNDLE}"]
    with _locked("build"):
        for target, ref in names.items():
            start = time.monotonic()
            podman(*args, "--target", target, "-t", ref, "-f", str(root / "Containerfile"), str(root))
            seconds[target] = round(time.monotonic() - start, 1)
        if prune:
            prune_old_tags(podman, prefix, keep=tag)
    sizes = {t: podman.size(r) for t, r in names.items()}
    return Built(tag, python_image, names, seconds, sizes)


def prune_old_tags(
    podman: Podman,
    prefix: str = REPO_PREFIX,
    keep: str = "",
    count: int = KEEP_TAGS,
    targets: tuple[str, ...] = TARGETS,
) -> None:
    """Keep the newest `count` tags of each of our repositories (and `keep`); remove the others."""
    out = podman("images", "--format", "{{.Repository}}:{{.Tag}} {{.CreatedAt}}", check=False)
    by_repo: dict[str, list[tuple[str, str]]] = {}
    for line in out.stdout.splitlines():
        ref, _, created = line.partition(" ")  # created: "2026-12-01 01:52:39 +0000 UTC", sorts as text
        repo, _, tag = ref.rpartition(":")
        if repo.startswith(prefix) and repo[len(prefix) :] in targets:
            by_repo.setdefault(repo, []).append((created, tag))
    for repo, tags in by_repo.items():
        newest_first = [tag for _, tag in sorted(tags, reverse=True)]
        for old in [t for t in newest_first[count:] if t != keep]:
            podman("rmi", f"{repo}:{old}", check=False)


# --- an image of your own task module -------------------------------------------------------------------------


def build_app(
    workers_ref: str, context: Path = SHOP_DIR, repository: str = SHOP_REPO, podman: Podman | None = None
) -> str:
    """`context`/Containerfile built FROM `workers_ref` (its WORKERS_IMAGE argument), context `context`; returns
    the image reference, built only when that tag is missing. Older tags of `repository` are pruned."""
    podman = podman or Podman()
    h = hashlib.sha256(f"{workers_ref}\0{podman.inspect(workers_ref, '{{.Id}}')}\0".encode())
    for f in [context / "Containerfile", *sorted(context.glob("*.py"))]:  # what the Containerfile copies
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    ref = f"{repository}:c{h.hexdigest()[:15]}"
    if podman.exists(ref):
        return ref
    with _locked("build"):
        podman("build", "--layers", "--network=none", "--build-arg", f"WORKERS_IMAGE={workers_ref}",
               "-t", ref, "-f", str(context / "Containerfile"), str(context))  # fmt: skip
        prefix, _, name = repository.rpartition("/")
        prune_old_tags(podman, prefix + "/", keep=ref.rpartition(":")[2], targets=(name,))
    return ref


# --- archives for a kubelet node -----------------------------------------------------------------------------


def save(built: Built, out: Path | None = None, podman: Podman | None = None) -> dict[str, Path]:
    """One docker-archive per image (`ctr -n k8s.io images import` keeps its name), skipped when the archive
    already holds that image id; images.json in the same folder names them."""
    podman = podman or Podman()
    out = out or images_dir()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "images.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    paths: dict[str, Path] = {}
    entries: dict[str, dict[str, str]] = {}
    for target, ref in built.refs.items():
        image_id = podman.inspect(ref, "{{.Id}}")
        path = out / f"queueworker-{target}.tar"
        prev = old.get("images", {}).get(target, {})
        if not (path.exists() and prev.get("id") == image_id and prev.get("ref") == ref):
            tmp = path.with_suffix(".tar.tmp")
            tmp.unlink(missing_ok=True)
            podman("save", "--format", "docker-archive", "-o", str(tmp), ref)
            tmp.rename(path)
        paths[target] = path
        entries[target] = {"ref": ref, "id": image_id, "archive": str(path)}
    manifest = {"tag": built.tag, "python_image": built.python_image, "images": entries}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return paths


def save_app(ref: str, out: Path | None = None, podman: Podman | None = None) -> Path:
    """One docker-archive of an app image (build_app's), named by its content tag: written once; the archives of
    the repository's other tags are removed."""
    podman = podman or Podman()
    out = out or images_dir()
    out.mkdir(parents=True, exist_ok=True)
    repo, _, tag = ref.rpartition(":")
    name = repo.rpartition("/")[2]
    path = out / f"{name}-{tag}.tar"
    if not path.exists():
        tmp = path.with_suffix(".tar.tmp")
        tmp.unlink(missing_ok=True)
        podman("save", "--format", "docker-archive", "-o", str(tmp), ref)
        tmp.rename(path)
    for old in out.glob(f"{name}-*.tar"):
        if old != path:
            old.unlink()
    return path


def archives(python_image: str | None = BASE_REF, out: Path | None = None) -> dict[str, Path]:
    """Build (cached) and save the three images; {target: archive path}. For a kubelet node:
    `ctr -n k8s.io images import PATH` for each, then the pods use `localhost/queueworker-<target>:<tag>`
    (the tag is in images.json beside the archives)."""
    podman = Podman()
    return save(build(python_image, podman=podman), out, podman)


def helm_sets(built: Built) -> list[str]:
    """`--set` arguments pointing the chart (charts/queueworker/values.yaml: api/operator/workers.image) at them."""
    sets = []
    for target, ref in built.refs.items():
        repo, _, tag = ref.rpartition(":")
        sets += ["--set", f"{target}.image.repository={repo}", "--set", f"{target}.image.tag={tag}"]
    return sets


# --- benchmark -----------------------------------------------------------------------------------------------


def bench(python_image: str | None = BASE_REF, results: Path = ROOT / "bench" / "results" / "images.json") -> dict:
    """Cold: a private, empty podman store (the base copied in, no layer of ours, no pip cache); warm: the same
    build again, everything cached. The tag and sizes are those of the default store's images."""
    main = Podman()
    python_image = python_image or default_python_image()
    # podman refuses a runroot path longer than 50 characters: that one goes to /tmp.
    with (
        tempfile.TemporaryDirectory(prefix="qw-images-bench-", dir=cache_dir()) as tmp,
        tempfile.TemporaryDirectory(prefix="qwb-") as runroot,
    ):
        cold_store = Podman(Path(tmp) / "storage", Path(runroot))
        try:
            if python_image.startswith("localhost/"):
                ensure_base(main, python_image)
                archive = Path(tmp) / "base.tar"
                main("save", "--format", "docker-archive", "-o", str(archive), python_image)
                cold_store("load", "-i", str(archive))
            start = time.monotonic()
            cold = build(python_image, podman=cold_store, prune=False, force=True)
            cold_total = round(time.monotonic() - start, 1)
            start = time.monotonic()
            warm = build(python_image, podman=cold_store, prune=False, force=True)
            warm_total = round(time.monotonic() - start, 1)
        finally:
            cold_store("system", "reset", "--force", check=False, timeout=300)
    data = {
        "python_image": python_image,
        "cold_seconds": cold_total,
        "cold_seconds_by_target": cold.seconds,
        "warm_seconds": warm_total,
        "warm_seconds_by_target": warm.seconds,
        "size_bytes": cold.sizes,
        "size_mb": {t: round(s / 1e6) for t, s in cold.sizes.items()},
        "base_size_mb": round(main.size(python_image) / 1e6) if main.exists(python_image) else None,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(data, indent=2) + "\n")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/images.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    base = sub.add_parser("base", help=f"make {BASE_REF} with mmdebstrap (cached by recipe)")
    base.add_argument("--force", action="store_true", help="remake it even if its recipe is unchanged")
    for name, text in (("build", "build and tag the three images"), ("save", "build, then write their archives")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--python-image", default=os.environ.get("PYTHON_IMAGE") or None)
        sp.add_argument("--force", action="store_true", help="run podman build even if the tag exists")
        if name == "save":
            sp.add_argument("--out", type=Path, default=None, help="archive folder (default .images/)")
    shop = sub.add_parser("shop", help=f"build {SHOP_REPO} (examples/shop/Containerfile) FROM the workers image")
    shop.add_argument("--python-image", default=os.environ.get("PYTHON_IMAGE") or None)
    shop.add_argument("--save", action="store_true", help="also write its archive (.images/)")
    bp = sub.add_parser("bench", help="cold and warm build times and sizes -> bench/results/images.json")
    bp.add_argument("--python-image", default=os.environ.get("PYTHON_IMAGE") or BASE_REF)
    args = p.parse_args(argv)
    if args.cmd == "base":
        print(ensure_base(force=args.force))
    elif args.cmd == "build":
        built = build(args.python_image, force=args.force)
        for target, ref in built.refs.items():
            print(f"{ref}  {built.sizes[target] / 1e6:.0f} MB  built in {built.seconds[target]} s")
    elif args.cmd == "save":
        for path in archives(args.python_image, args.out).values():
            print(path)
    elif args.cmd == "shop":
        ref = build_app(build(args.python_image).refs["workers"])
        print(save_app(ref) if args.save else ref)
    elif args.cmd == "bench":
        print(json.dumps(bench(args.python_image), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
