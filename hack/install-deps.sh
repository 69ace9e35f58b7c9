#!/usr/bin/env bash
# Installs what the tests and the demo need, and only what is missing, so
# that a machine that already has everything passes without the registries.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v iptables-legacy-restore >/dev/null || need_apt+=(iptables)
command -v nft >/dev/null || need_apt+=(nftables)
command -v ip >/dev/null || need_apt+=(iproute2)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
# The console's browser test drives Debian's chromium headless (about a minute to install).
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
	echo ">> apt-get install ${need_apt[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

gobin=$(go env GOPATH)/bin
if [ ! -x "$gobin/staticcheck" ]; then
	echo ">> go install staticcheck"
	go install honnef.co/go/tools/cmd/staticcheck@v0.6.1
fi

# A real kube-apiserver and etcd for the API tests, built once and cached.
if [ -x hack/build-kube.sh ]; then
	hack/build-kube.sh
fi
# kwok's simulated nodes for the scale harness (test/scale), likewise.
if [ -x hack/build-kwok.sh ]; then
	hack/build-kwok.sh
fi
