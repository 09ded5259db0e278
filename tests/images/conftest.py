"""The images of the Containerfile, built once per session from the local Debian base (no registry is reachable
here); a warm session only checks that the images of this tree's content tag exist."""

from __future__ import annotations

import time

import images
import pytest

from tests.conftest import _need


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "images: builds the container images with podman and runs them")


@pytest.fixture(scope="session")
def podman() -> images.Podman:
    try:
        return images.Podman()
    except SystemExit as exc:
        _need("podman", exc)
        raise


@pytest.fixture(scope="session")
def built(podman: images.Podman) -> images.Built:
    start = time.monotonic()
    result = images.build(images.BASE_REF, podman=podman)
    took = time.monotonic() - start
    sizes = ", ".join(f"{t} {s / 1e6:.0f} MB" for t, s in result.sizes.items())
    print(f"\nimages {result.tag} from {result.python_image}: ready in {took:.1f} s ({sizes})")
    return result
