#!/usr/bin/env bash
# Installs what the end-to-end suite (test/e2e) needs, and only what is
# missing, so that a machine that already has it all passes offline:
# Debian's containerd, runc, containernetworking-plugins and iptables, and
# crictl built from its Go module into ${MESHCNI_CACHE:-/var/cache/meshcni}/bin.
#
# No service is started: the suite runs its own containerd inside a node
# network namespace it creates.
set -euo pipefail
cd "$(dirname "$0")/.."

CRICTL_VERSION=v1.34.0

need_apt=()
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v nsenter >/dev/null || need_apt+=(util-linux)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
if [ ${#need_apt[@]} -gt 0 ]; then
	echo ">> apt-get install ${need_apt[*]}"
	# Debian's containerd package would start the host's containerd; the
	# suite must be the only one running it, and only in its node netns.
	policy=/usr/sbin/policy-rc.d
	made_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
		made_policy=1
	fi
	trap '[ -z "$made_policy" ] || rm -f "$policy"' EXIT
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

bin=${MESHCNI_CACHE:-/var/cache/meshcni}/bin
mkdir -p "$bin"
if [ ! -x "$bin/crictl-$CRICTL_VERSION" ]; then
	echo ">> building crictl $CRICTL_VERSION"
	tmp=$(mktemp -d)
	GOWORK=off GOTOOLCHAIN=local GOBIN=$tmp go install -ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
	mv "$tmp/crictl" "$bin/crictl-$CRICTL_VERSION"
	rm -rf "$tmp"
fi
ln -sfn "crictl-$CRICTL_VERSION" "$bin/crictl"
