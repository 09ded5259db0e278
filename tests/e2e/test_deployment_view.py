"""The operator's own view of the Deployments it scales (qw_operator.deployments, which replaced kopf's indexes),
on the real apiserver under the shipped RBAC: listed before anything is decided, then followed (a scale by hand,
an owner added, a deletion, a Deployment created later), and resumed after its watch is cut."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from qw_operator.deployments import DeploymentView
from qw_operator.observe import Replicas

from tests.e2e.harness import Env, deployment

pytestmark = [pytest.mark.e2e]


def _sa_client(env: Env) -> k8s.ApiClient:
    """The operator's ServiceAccount: the shipped Role must allow the list and the watch."""
    conf = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(env.sa_kubeconfig), client_configuration=conf)
    return k8s.ApiClient(conf)


async def _until(check: Callable[[], bool], within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "the view did not follow in time"
        await asyncio.sleep(0.05)


def test_the_view_lists_first_then_follows_every_change(env: Env) -> None:
    env.apply(deployment("view-before", 2))

    async def run() -> None:
        view = DeploymentView(_sa_client(env), [env.namespace], server_timeout=2, client_timeout=10)
        view.start()
        try:
            await asyncio.wait_for(view.synced.wait(), 20)
            # Listed before `synced`: an existing Deployment is never taken for a missing one.
            before = view.replicas_for(env.namespace, "view-before")
            assert isinstance(before, Replicas) and before.spec == 2
            assert view.controller_for(env.namespace, "view-before") == ""
            assert view.replicas_for(env.namespace, "view-missing") is None
            assert view.controller_for(env.namespace, "view-missing") is None

            env.apply(deployment("view-later", 0))
            await _until(lambda: (r := view.replicas_for(env.namespace, "view-later")) is not None and r.spec == 0)

            env.kubectl("scale", "deployment/view-before", "--replicas=5")
            await _until(lambda: (r := view.replicas_for(env.namespace, "view-before")) is not None and r.spec == 5)

            # The watch is ended by the server every 2 s here (server_timeout): later changes still arrive.
            await asyncio.sleep(3)
            env.apply(deployment("view-owner", 0))
            uid = env.kubectl("get", "deployment/view-owner", "-o", "jsonpath={.metadata.uid}").stdout
            patch = (
                '{"metadata":{"ownerReferences":[{"apiVersion":"apps/v1","kind":"Deployment","name":"view-owner",'
                f'"uid":"{uid}","controller":true}}]}}}}'
            )
            env.kubectl("patch", "deployment/view-later", "--type=merge", "-p", patch)
            await _until(lambda: view.controller_for(env.namespace, "view-later") == uid)

            env.kubectl("delete", "deployment/view-later", "--wait=false")
            await _until(lambda: view.replicas_for(env.namespace, "view-later") is None)
            assert view.controller_for(env.namespace, "view-later") is None
            assert view.lists == 1, "a watch the server ended is resumed without listing again"
        finally:
            view.stop()
            env.kubectl("delete", "deployment/view-before", "deployment/view-owner", "--ignore-not-found", check=False)

    asyncio.run(run())


def test_a_namespace_the_role_does_not_cover_is_retried_not_synced(env: Env) -> None:
    """A list that fails (403 here: the Role is namespaced) leaves the view unsynced, so nothing is decided on
    an empty view; it keeps listing."""

    async def run() -> None:
        view = DeploymentView(_sa_client(env), [env.namespace, "kube-system"], server_timeout=2, client_timeout=10)
        view.start()
        try:
            await asyncio.sleep(3)
            assert not view.synced.is_set()
        finally:
            view.stop()

    asyncio.run(run())
