#!/usr/bin/env bash
# Builds a real kube-apiserver and etcd for the API tests (test/kubeharness),
# and the rest of a cluster for test/cluster (kubelet, kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl), and caches them outside the repo, in
# ${MESHCNI_CACHE:-/var/cache/meshcni}/bin.
#
# Each binary is built only when its versioned file is missing, so a machine
# that already has the cache passes without reaching any registry. Bumping a
# version below rebuilds that binary; the unversioned names are symlinks to
# the current versions, and those are what the harness runs.
#
# Both come from the Go module proxy, as source: no prebuilt downloads.
set -euo pipefail

KUBE_VERSION=v1.34.4
# The etcd server that k8s.io/kubernetes $KUBE_VERSION pins in its go.mod.
ETCD_VERSION=v3.6.4

cache=${MESHCNI_CACHE:-/var/cache/meshcni}
bin=$cache/bin
mkdir -p "$bin"

export GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=local
ldflags="-s -w"

# link NAME VERSIONED points bin/NAME at bin/VERSIONED.
link() {
	ln -sfn "$2" "$bin/$1"
}

# kube_module_dir prints a module directory whose go.mod requires
# k8s.io/kubernetes $KUBE_VERSION with its staging replacements, writing it
# the first time.
kube_module_dir() {
	local dir=$cache/build/kube-apiserver-$KUBE_VERSION
	if [ -f "$dir/go.mod" ] && grep -q "k8s.io/kubernetes $KUBE_VERSION" "$dir/go.mod"; then
		echo "$dir"
		return
	fi
	mkdir -p "$dir"
	echo ">> fetching k8s.io/kubernetes $KUBE_VERSION" >&2
	local kdir
	kdir=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -f "$kdir/go.mod" ] || { echo "build-kube: no go.mod for k8s.io/kubernetes@$KUBE_VERSION" >&2; exit 1; }
	# Each staging module that kubernetes replaces with ./staging/src/k8s.io/X
	# is published as k8s.io/X v0.<minor>.<patch>.
	local staging_version=v0.${KUBE_VERSION#v1.}
	{
		echo "module meshcni.local/build/kube-apiserver"
		echo
		echo "go 1.24"
		echo
		echo "require k8s.io/kubernetes $KUBE_VERSION"
		echo
		echo "replace ("
		grep -E '^[[:space:]]*k8s\.io/[^[:space:]]+ => \./staging/src/' "$kdir/go.mod" |
			awk -v v="$staging_version" '{ printf "\t%s => %s %s\n", $1, $1, v }'
		echo ")"
	} >"$dir/go.mod"
	rm -f "$dir/go.sum"
	echo "$dir"
}

# kube_ldflags stamps the version the way kubernetes' own build does, so the
# binaries report $KUBE_VERSION (the kubelet and kubectl check skew with it).
kube_ldflags() {
	local vpkg=k8s.io/component-base/version
	local minor=${KUBE_VERSION#v1.}
	minor=${minor%%.*}
	echo "$ldflags -X $vpkg.gitVersion=$KUBE_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
}

build_kube_apiserver() {
	local out=$bin/kube-apiserver-$KUBE_VERSION
	if [ -x "$out" ]; then
		link kube-apiserver "kube-apiserver-$KUBE_VERSION"
		return
	fi
	local dir
	dir=$(kube_module_dir)
	echo ">> building kube-apiserver $KUBE_VERSION (about 5 minutes on 2 cores)"
	local start=$SECONDS
	(cd "$dir" && go build -trimpath -o "$out.tmp" -ldflags "$(kube_ldflags)" \
		k8s.io/kubernetes/cmd/kube-apiserver)
	mv "$out.tmp" "$out"
	link kube-apiserver "kube-apiserver-$KUBE_VERSION"
	echo ">> built $out in $((SECONDS - start))s"
}

# The rest of a cluster, for test/cluster. The missing ones are built in one
# go build, so the packages they share (most of kubernetes) compile once.
CLUSTER_BINARIES="kubelet kube-controller-manager kube-scheduler kube-proxy kubectl"

build_kube_cluster() {
	local missing=() name
	for name in $CLUSTER_BINARIES; do
		if [ -x "$bin/$name-$KUBE_VERSION" ]; then
			link "$name" "$name-$KUBE_VERSION"
		else
			missing+=("$name")
		fi
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	local dir
	dir=$(kube_module_dir)
	local tmp=$cache/build/cluster-$KUBE_VERSION.tmp
	rm -rf "$tmp"
	mkdir -p "$tmp"
	local pkgs=()
	for name in "${missing[@]}"; do
		pkgs+=("k8s.io/kubernetes/cmd/$name")
	done
	echo ">> building ${missing[*]} $KUBE_VERSION (cold: about 15 minutes on 2 cores)"
	local start=$SECONDS
	(cd "$dir" && go build -trimpath -o "$tmp/" -ldflags "$(kube_ldflags)" "${pkgs[@]}")
	for name in "${missing[@]}"; do
		mv "$tmp/$name" "$bin/$name-$KUBE_VERSION"
		link "$name" "$name-$KUBE_VERSION"
	done
	rm -rf "$tmp"
	echo ">> built ${missing[*]} in $((SECONDS - start))s"
}

build_etcd() {
	local out=$bin/etcd-$ETCD_VERSION
	if [ -x "$out" ]; then
		link etcd "etcd-$ETCD_VERSION"
		return
	fi
	local dir=$cache/build/etcd-$ETCD_VERSION
	mkdir -p "$dir"
	printf 'module meshcni.local/build/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
		"$ETCD_VERSION" >"$dir/go.mod"
	rm -f "$dir/go.sum"
	echo ">> building etcd $ETCD_VERSION (about 1 minute on 2 cores)"
	local start=$SECONDS
	local vpkg=go.etcd.io/etcd/api/v3/version
	(cd "$dir" && go build -trimpath -o "$out.tmp" \
		-ldflags "$ldflags -X $vpkg.GitSHA=$ETCD_VERSION" \
		go.etcd.io/etcd/server/v3)
	mv "$out.tmp" "$out"
	link etcd "etcd-$ETCD_VERSION"
	echo ">> built $out in $((SECONDS - start))s"
}

# With "cluster", only the binaries test/cluster needs beyond the API tests'.
case "${1:-}" in
"") build_etcd; build_kube_apiserver; echo ">> kube-apiserver and etcd ready in $bin" ;;
cluster) build_etcd; build_kube_apiserver; build_kube_cluster; echo ">> cluster binaries ready in $bin" ;;
*) echo "usage: $0 [cluster]" >&2; exit 2 ;;
esac
