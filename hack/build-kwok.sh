#!/usr/bin/env bash
# Builds kwok (sigs.k8s.io/kwok: simulated kubelet-less nodes, for the scale
# harness test/scale) from its Go module and caches it beside kube-apiserver
# in ${MESHCNI_CACHE:-/var/cache/meshcni}/bin, as hack/build-kube.sh does.
#
# Built only when its versioned file is missing, so a machine that already
# has the cache passes without reaching any registry; bumping the version
# rebuilds it, and the unversioned name is a symlink to the current one.
set -euo pipefail

KWOK_VERSION=v0.8.0

cache=${MESHCNI_CACHE:-/var/cache/meshcni}
bin=$cache/bin
mkdir -p "$bin"
out=$bin/kwok-$KWOK_VERSION

if [ ! -x "$out" ]; then
	echo ">> building kwok $KWOK_VERSION (a few minutes on 2 cores)"
	start=$SECONDS
	tmp=$cache/build/kwok-$KWOK_VERSION.tmp
	rm -rf "$tmp"
	mkdir -p "$tmp"
	# go install MODULE@VERSION builds with kwok's own go.mod and go.sum,
	# outside any module of ours.
	GOWORK=off GOFLAGS= GOTOOLCHAIN=local GOBIN=$tmp CGO_ENABLED=0 \
		go install -trimpath -ldflags '-s -w' "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
	mv "$tmp/kwok" "$out"
	rm -rf "$tmp"
	echo ">> built $out in $((SECONDS - start))s"
fi
ln -sfn "kwok-$KWOK_VERSION" "$bin/kwok"
