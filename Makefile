# Every target that needs tools installs them first (hack/install-deps.sh).
GO ?= go
PKGS := ./...
GOBIN := $(shell $(GO) env GOPATH)/bin

.PHONY: all build test unit lint deps demo fuzz clean scale

all: build

# As the image builds them (internal/image): static, no cgo. A dynamically
# linked plug-in pays the loader at every pod start (measured: ~1.5 ms of
# a ~5 ms ADD, docs/performance.md).
STATIC := CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w'

build:
	$(STATIC) -o bin/ ./cmd/...

deps:
	hack/install-deps.sh

lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags integration $(PKGS)
	$(GOBIN)/staticcheck -tags integration $(PKGS)

unit:
	$(GO) test $(PKGS)

# The whole suite: unit tests, then the real-kernel and real-API tests
# (root; every topology lives in network namespaces the tests create).
test: deps lint e2e e2e-cluster
	$(GO) test -count=1 -tags integration $(PKGS)
	FUZZTIME=$(CI_FUZZTIME) hack/fuzz.sh

CI_FUZZTIME ?= 3s

# Every fuzz target for FUZZTIME each.
fuzz:
	hack/fuzz.sh

# The demo: the user's journey on a real two-node cluster brought up on
# this machine (test/cluster, docs/e2e.md). Root.
demo: cluster-deps image
	$(GO) run ./test/demo

# The plug-in alone: a real kube-apiserver, Bookinfo pods, the CNI chain
# run per pod on a simulated node.
.PHONY: demo-plugin
demo-plugin: deps
	$(GO) run ./test/demo/plugin

clean:
	rm -rf bin

# deploy/meshcni.yaml: the chart rendered with default values (a test
# checks that it is up to date).
.PHONY: manifests
manifests:
	$(GO) run ./cmd/meshcnictl render > deploy/meshcni.yaml

# dist/meshcni-agent.oci.tar: the agent image as an OCI layout tarball,
# built offline and reproducibly (SOURCE_DATE_EPOCH, default: the last
# commit's time). IMAGE_CMDS lists the cmd/ binaries to put in it.
IMAGE_CMDS ?= meshcni-agent,meshcni,meshcni-lookup,meshcni-iptables,meshcni-controller
IMAGE_REF ?= ghcr.io/meshcni/meshcni-agent:0.1.0
.PHONY: image
image:
	$(GO) run ./hack/image -o dist/meshcni-agent.oci.tar -cmds $(IMAGE_CMDS) -ref $(IMAGE_REF)

# End to end under a real container runtime (test/e2e, docs/e2e.md):
# containerd in a node netns runs the conflist that meshcni-agent keeps,
# for real pods against a real kube-apiserver. Root; a few minutes.
.PHONY: e2e
e2e: deps
	hack/e2e-deps.sh
	$(GO) vet -tags e2e ./test/e2e/...
	$(GO) test -count=1 -tags e2e ./test/e2e/ -v -timeout 20m

# Performance (docs/performance.md): the netfilter Go benchmarks, then the
# ADD benchmark on a simulated node against a real kube-apiserver (root;
# about 2 minutes). BENCH_FLAGS adds flags, e.g. "--pods 100" or, after
# make build, "--agent bin/meshcni-agent"; `go run ./test/bench -h` lists
# them. strace (execs and forks per ADD) is installed if missing.
.PHONY: bench
bench: deps
	@command -v strace >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; }
	$(STATIC) -o bin/ ./cmd/meshcni ./cmd/meshcni-lookup
	$(GO) test -tags integration -run '^$$' -bench . ./internal/netfilter/
	$(GO) run ./test/bench --plugin bin/meshcni $(BENCH_FLAGS)

# What a real cluster needs beyond the e2e suite: kubelet, kube-proxy,
# kube-controller-manager, kube-scheduler and kubectl, built once and cached
# beside kube-apiserver (hack/build-kube.sh).
.PHONY: cluster-deps
cluster-deps: deps
	hack/e2e-deps.sh
	hack/build-kube.sh cluster

# The user's journey on a real two-node cluster as assertions (test/cluster,
# docs/e2e.md). Root; a few minutes.
.PHONY: e2e-cluster
e2e-cluster: cluster-deps image
	$(GO) vet -tags cluster ./test/cluster/...
	$(GO) test -count=1 -tags cluster ./test/cluster/ -v -timeout 20m

# The scale harness (test/scale, docs/performance.md "Scale"): 2,000 kwok
# nodes and 60,000 pods on the real API server, kube-controller-manager and
# kube-scheduler, with meshcni-controller's two replicas as real processes
# (the leader reconciles, the standby serves the webhook); prints the table at the end. Root; about an hour on 2 cores.
# SCALE_FLAGS sizes it, e.g. "-scale.nodes=250 -scale.pods=7500" (`go test
# -tags scale ./test/scale -args -h` lists them). Not part of `make test`,
# which runs its small run (TestSmallScale, 20 nodes, tag integration).
scale: cluster-deps
	$(GO) test -count=1 -tags scale ./test/scale/ -run '^TestScale$$' -v -timeout 6h -args $(SCALE_FLAGS)
