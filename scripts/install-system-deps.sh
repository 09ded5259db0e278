#!/usr/bin/env bash
# Installs the Debian packages a make target needs, only those missing. Idempotent.
#   install-system-deps.sh dev     what `make dev` runs: rabbitmq-server (3.10, with its management and Prometheus
#                                  plugins); SQLite, the SMTP sink and the rest come from the venv
#   install-system-deps.sh images  what `make images` uses: podman, runc, mmdebstrap
#   install-system-deps.sh test    everything the suites use (dev's and images' packages too); the default
#   install-system-deps.sh --list GROUP...   print the groups' packages, install nothing
# Services: Debian's postinst starts a package's service where an init system runs. The project runs its own
# instances on 127.0.0.1 with their own data directories, so the script stops a service only when this very run
# installed its package (it started it), never one that was installed, and maybe running, before.
set -euo pipefail
list=""; [ "${1:-}" = "--list" ] && { list=1; shift; }
groups=("${@:-test}")
want=()
for g in "${groups[@]}"; do
  case "$g" in
    dev) want+=(rabbitmq-server) ;;
    # podman: builds and runs the container images (scripts/images.py; as root, so no uidmap/slirp4netns needed),
    # with runc as the runtime scripts/containers.conf names (podman alone would pull crun, which refuses this
    # host); mmdebstrap: the local Debian base image (make images-base).
    images) want+=(podman runc mmdebstrap) ;;
    test)
      want+=(rabbitmq-server podman runc mmdebstrap)  # dev's and images'; mmdebstrap also makes the RabbitMQ 4.x
      # test broker's Debian trixie root (scripts/rabbitmq.py, Broker4). postgresql: the store's second backend;
      # openssl: the test control plane's certificates (tests/cluster/cluster_pki.py); chromium: the upload page
      # through Playwright; prometheus: the dashboard queries and scrapes checked against a real one.
      want+=(postgresql openssl chromium prometheus)
      # containerd, runc, containernetworking-plugins, iptables: the test cluster's real node
      # (tests/cluster/real_node.py); busybox-static: the root filesystem of its pause image and of the
      # real-node tests' image.
      want+=(containerd containernetworking-plugins iptables busybox-static)
      ;;
    *) echo "usage: $0 [dev|images|test]..." >&2; exit 2 ;;
  esac
done
mapfile -t want < <(printf '%s\n' "${want[@]}" | sort -u)
[ -n "$list" ] && { printf '%s\n' "${want[@]}"; exit 0; }
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Only the services of packages installed just now (see above), each given at most 60 s.
for svc in rabbitmq-server postgresql prometheus; do
  [[ " ${missing[*]} " == *" $svc "* ]] || continue
  command -v service >/dev/null || continue
  $SUDO timeout 60 service "$svc" stop >/dev/null 2>&1 || echo "note: could not stop the $svc service it just installed"
done
