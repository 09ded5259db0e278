"""Certificates and kubeconfigs for the test control plane, made with the `openssl` CLI (stdlib only).

One throwaway CA signs the API server's serving cert and a client cert per identity; the service-account
signing key is a separate EC key. EC P-256 keys, because they are generated in milliseconds.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from pathlib import Path


class PkiError(RuntimeError):
    pass


ADMIN_USER = ("kubernetes-admin", "system:masters")
# Every name a client inside or outside the cluster may use for the API server.
APISERVER_SANS = [
    "IP:127.0.0.1",
    "DNS:localhost",
    "IP:10.96.0.1",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
]


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PkiError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def make_pki(pki: Path, extra_sans: list[str] | None = None) -> None:
    """extra_sans: more names for the API server's serving cert (the real node's gateway IP, where pods reach it)."""
    pki.mkdir(parents=True, exist_ok=True)
    _ca(pki, "ca", "/CN=queueworker-test-ca")
    _leaf(pki, "ca", "apiserver", "/CN=kube-apiserver", "serverAuth", APISERVER_SANS + (extra_sans or []))
    _leaf(pki, "ca", "admin", f"/O={ADMIN_USER[1]}/CN={ADMIN_USER[0]}", "clientAuth")
    _leaf(pki, "ca", "controller-manager", "/CN=system:kube-controller-manager", "clientAuth")
    _leaf(pki, "ca", "scheduler", "/CN=system:kube-scheduler", "clientAuth")
    # kwok writes node and pod status for every fake node, as the Node authorizer would not allow.
    _leaf(pki, "ca", "kwok", "/O=system:masters/CN=kwok", "clientAuth")
    # The API server's identity towards kubelets (logs, exec, port-forward), as kubeadm names it.
    _leaf(pki, "ca", "apiserver-kubelet-client", f"/O={ADMIN_USER[1]}/CN=kube-apiserver-kubelet-client", "clientAuth")
    # The aggregation layer's own CA (as kubeadm does): the apiserver proxies to extension API servers
    # with this client cert, and the controller-manager and scheduler trust it for delegated authn.
    _ca(pki, "front-proxy-ca", "/CN=queueworker-test-front-proxy-ca")
    _leaf(pki, "front-proxy-ca", "front-proxy-client", "/CN=front-proxy-client", "clientAuth")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{pki}/sa.key")
    _openssl("ec", "-in", f"{pki}/sa.key", "-pubout", "-out", f"{pki}/sa.pub")


def _ca(pki: Path, name: str, subject: str) -> None:
    _openssl(
        *("req", "-x509", *_EC_KEY, "-days", "3650", "-subj", subject),
        *("-keyout", f"{pki}/{name}.key", "-out", f"{pki}/{name}.crt"),
        *("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )


def _leaf(pki: Path, ca: str, name: str, subject: str, usage: str, sans: list[str] | None = None) -> None:
    ext = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if sans:
        ext.append("subjectAltName=" + ",".join(sans))
    (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl("req", "-new", *_EC_KEY, "-keyout", f"{pki}/{name}.key", "-out", f"{pki}/{name}.csr", "-subj", subject)
    _openssl(
        *("x509", "-req", "-in", f"{pki}/{name}.csr", "-days", "3650", "-set_serial", "0x" + secrets.token_hex(16)),
        *("-CA", f"{pki}/{ca}.crt", "-CAkey", f"{pki}/{ca}.key", "-extfile", f"{pki}/{name}.ext"),
        *("-out", f"{pki}/{name}.crt"),
    )


def write_kubeconfig(path: Path, pki: Path, server: str, user: str) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "queueworker-test", "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(f"{user}.crt"), "client-key-data": b64(f"{user}.key")},
            }
        ],
        "contexts": [{"name": "queueworker-test", "context": {"cluster": "queueworker-test", "user": user}}],
        "current-context": "queueworker-test",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML: every client reads it
    path.chmod(0o600)


def make_client_cert(pki: Path, name: str, user: str, group: str | None = None) -> None:
    """A client cert NAME.crt/.key for USER (in GROUP), signed by the cluster CA, for write_kubeconfig(..., NAME)."""
    _leaf(pki, "ca", name, (f"/O={group}" if group else "") + f"/CN={user}", "clientAuth")


def make_node_pki(pki: Path, node: str, node_ip: str) -> None:
    """A kubelet's client cert (the Node authorizer's system:node:<name> in system:nodes), as kubelet.crt,
    and its serving cert for the node IP, which the API server checks against the cluster CA."""
    _leaf(pki, "ca", "kubelet", f"/O=system:nodes/CN=system:node:{node}", "clientAuth")
    _leaf(
        pki,
        "ca",
        "kubelet-serving",
        f"/O=system:nodes/CN=system:node:{node}",
        "serverAuth",
        [f"IP:{node_ip}", f"DNS:{node}"],
    )
