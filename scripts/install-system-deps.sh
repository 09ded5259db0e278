#!/usr/bin/env bash
# Installs the Debian packages the tests and `make dev` use, only those missing. Idempotent.
set -euo pipefail
# mmdebstrap: the RabbitMQ 4.x test broker runs from a Debian trixie root it makes (scripts/rabbitmq.py, Broker4).
want=(rabbitmq-server postgresql openssl chromium prometheus mmdebstrap)
# containerd, runc, containernetworking-plugins, iptables: the test cluster's opt-in real node (tests/cluster/real_node.py);
# busybox-static: the root filesystem of its pause image and of the real-node tests' image.
want+=(containerd runc containernetworking-plugins iptables busybox-static)
# podman: builds and runs the container images (scripts/images.py; as root, so no uidmap/slirp4netns needed), with
# runc as the runtime scripts/containers.conf names (podman alone would pull crun, which refuses this host).
want+=(podman runc)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's packages may start their services on install where an init system exists; the project
# runs its own instances on 127.0.0.1 with its own data directories, so stop the packaged ones.
for svc in rabbitmq-server postgresql prometheus; do
  command -v service >/dev/null && $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
