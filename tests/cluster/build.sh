#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok, helm; for the opt-in real node kubelet, kube-proxy and CoreDNS) from the pinned Go modules under tests/cluster/, into a cache outside the
# repo keyed by everything that decides the bytes, then links the binaries into <repo>/.cluster/bin.
# A second run, or a fresh clone on the same machine, is a cache hit and takes about a second.
#
# Env: QW_CLUSTER_CACHE (default ~/.cache/queueworker/cluster), QW_CLUSTER_BIN (default
# <repo>/.cluster/bin), QW_GO_BUILD_P (default 2: parallel compile jobs; each may take ~1.5 GB).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache_root="${QW_CLUSTER_CACHE:-${HOME:-/root}/.cache/queueworker/cluster}"
bin_link_dir="${QW_CLUSTER_BIN:-$repo/.cluster/bin}"
modules=(etcd k8s kwok helm coredns)
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kwok helm coredns)

# Pinned versions; go.mod of each module must agree (checked below, so they cannot drift apart).
K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
COREDNS_VERSION=v1.15.0

export PATH="$PATH:/usr/local/go/bin" # where the Go tarball installs, if a non-login shell lacks it
command -v go >/dev/null || { echo "build.sh: go not found on PATH (need Go >= 1.26)" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"

check_pin() { # module-dir module-path version
  grep -qE "^(require )?[[:space:]]*$2 $3( // indirect)?\$" "$here/$1/go.mod" ||
    { echo "build.sh: $1/go.mod does not pin $2 $3" >&2; exit 1; }
}
check_pin k8s k8s.io/kubernetes "$K8S_VERSION"
check_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
check_pin kwok sigs.k8s.io/kwok "$KWOK_VERSION"
check_pin helm helm.sh/helm/v3 "$HELM_VERSION"
check_pin coredns github.com/coredns/coredns "$COREDNS_VERSION"

# The key covers this script, each wrapper module's sources, the Go toolchain and the platform.
key="$(
  {
    go env GOVERSION GOOS GOARCH
    cd "$here"
    sha256sum build.sh
    find "${modules[@]}" -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) -print0 |
      sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)"
key_dir="$cache_root/$K8S_VERSION-$key"

link_into_repo() {
  mkdir -p "$bin_link_dir"
  for b in "${binaries[@]}" kwok-stages; do ln -sfn "$key_dir/bin/$b" "$bin_link_dir/$b"; done
  echo "build.sh: binaries in $key_dir/bin, linked from $bin_link_dir"
}

if [[ -f "$key_dir/complete" ]]; then
  echo "build.sh: cache hit ($key_dir)"
  link_into_repo
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.build.lock"
echo "build.sh: waiting for the build lock ($cache_root/.build.lock)"
flock 9
if [[ -f "$key_dir/complete" ]]; then # another process built it while we waited
  echo "build.sh: cache hit after waiting ($key_dir)"
  link_into_repo
  exit 0
fi

tmp="$key_dir.tmp.$$"
rm -rf "$tmp" && mkdir -p "$tmp/bin"
trap 'rm -rf "$tmp"' EXIT
# The release's publication time, not now: the same inputs give the same binaries.
build_date="$(cd "$here/k8s" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
k8s_minor="${K8S_VERSION#v1.}" && k8s_minor="${k8s_minor%%.*}"
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  version_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date -X $pkg.gitCommit="
done

build() { # module-dir extra-ldflags packages...
  local dir="$1" ldflags="$2" start=$SECONDS
  shift 2
  echo "build.sh: building $* in $dir"
  (cd "$here/$dir" && go build -p "${QW_GO_BUILD_P:-2}" -trimpath -ldflags "-s -w $ldflags" -o "$tmp/bin/" "$@")
  echo "build.sh: $dir done in $((SECONDS - start))s"
}

total_start=$SECONDS
build etcd "" .
build kwok "" tool
build helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" tool
build k8s "$version_ldflags" k8s.io/kubernetes/cmd/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
# The real node's kubelet, kube-proxy and CoreDNS (opt-in, real_node.py), each timed on its own: what they
# add to a build.
kubelet_start=$SECONDS
build k8s "$version_ldflags" k8s.io/kubernetes/cmd/kubelet
kubelet_seconds=$((SECONDS - kubelet_start))
kube_proxy_start=$SECONDS
build k8s "$version_ldflags" k8s.io/kubernetes/cmd/kube-proxy
kube_proxy_seconds=$((SECONDS - kube_proxy_start))
coredns_start=$SECONDS
build coredns "" .
coredns_seconds=$((SECONDS - coredns_start))
# kwok's stages (fake node heartbeat, pod lifecycle) ship in its module zip, next to the code they fit.
kwok_src="$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
mkdir -p "$tmp/bin/kwok-stages"
cp "$kwok_src/node/fast/node-initialize.yaml" "$kwok_src/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
  "$kwok_src"/pod/fast/pod-{ready,complete,delete}.yaml "$tmp/bin/kwok-stages/"
chmod 0644 "$tmp/bin/kwok-stages/"*
for b in "${binaries[@]}"; do [[ -x "$tmp/bin/$b" ]] || { echo "build.sh: $b was not built" >&2; exit 1; }; done
printf '%s\n' "k8s=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION helm=$HELM_VERSION coredns=$COREDNS_VERSION" \
  "built $(date -u +%FT%TZ) in $((SECONDS - total_start))s" "kubelet_build_seconds=$kubelet_seconds" \
  "kube_proxy_build_seconds=$kube_proxy_seconds" "coredns_build_seconds=$coredns_seconds" > "$tmp/BUILDINFO"
touch "$tmp/complete"
rm -rf "$key_dir" && mv "$tmp" "$key_dir"
trap - EXIT
# Keep the three newest builds (other branches may want theirs); each is about 470 MB.
find "$cache_root" -mindepth 1 -maxdepth 1 -type d -name 'v*-*' ! -name '*.tmp.*' -printf '%T@ %p\n' |
  sort -rn | tail -n +4 | cut -d' ' -f2- | xargs -r rm -rf
echo "build.sh: build took $((SECONDS - total_start))s"
link_into_repo
