# carve: make demo runs the main job, make test runs every test layer.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN := _output/carve-csi

.PHONY: generate all build deps test test-unit test-lvm test-e2e bench fuzz demo image vet clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/carve-csi

vet:
	@test -z "$$(gofmt -l cmd pkg test hack)" || { gofmt -l cmd pkg test hack; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# Every layer: unit tests (fake runner), real lvm2 on loop devices, mounts on
# loop devices, csi-sanity against the binary, then the VM rig.
# hack/test.sh runs them in this order, stops at the first failure and prints each one's time.
test:
	@MAKE=$(MAKE) hack/test.sh deps vet test-unit fuzz-short test-integration test-e2e test-faults test-cluster

# The Debian packages the demo and the tests use, installed only if missing.
deps:
	hack/deps.sh

# All Go tests, as root: tests that need root or a free loop device skip with the reason.
test-unit:
	$(GO) test -race -count=1 ./...

# The controller path on a real control plane built from source (hack/k8s; the
# first build takes 9-15 minutes, then it is cached): the storage capacity demo,
# crashes, expansion, bad input, leak audit, benchmark. Then deploy/kubernetes is
# rendered, applied to a fresh control plane, and each ServiceAccount's permissions
# are checked (test/manifests). Needs root.
.PHONY: test-integration
test-integration:
	hack/k8s/build.sh
	CARVE_INTEGRATION=1 $(GO) test -count=1 -v -timeout 40m ./test/integration/
	CARVE_INTEGRATION=1 $(GO) test -count=1 -v -timeout 10m ./test/manifests/

# Real lvm2 (metadata-only, loop device) and csi-sanity against carve-csi --mode=node.
test-lvm:
	$(GO) test -count=1 -v -run 'Real|Sanity' ./pkg/backend/lvm/ ./test/lvmtest/ ./test/sanity/

# The whole node path in a QEMU VM: csi-sanity without skips and the node scenarios,
# the PMEM suite and the disk checks of test/disks, in one boot.
test-e2e:
	hack/e2e.sh

# Issue 15 in the QEMU VM with six more virtio disks: pools from disks, striping,
# a removed disk, stale data, wipe costs (test/disks). make test runs these in
# test-e2e's boot (hack/e2e-guest.sh); this target boots the VM for them alone.
.PHONY: test-disks
test-disks:
	test/disks/run-vm.sh

# Crash consistency in the QEMU VM: carve-csi SIGKILLed at every step boundary,
# restarted, the call retried, leaks and losses audited, on an LVM volume group,
# then snapshots and clones on an lvm-thin pool in it, then a PMEM region, in one
# boot (CARVE_FAULTS_TRIALS, CARVE_FAULTS_THIN_TRIALS, CARVE_FAULTS_PMEM_TRIALS,
# CARVE_FAULTS_POOLS="lvm thin pmem", CARVE_FAULTS_SEED).
.PHONY: test-faults
test-faults:
	hack/faults.sh

# carve installed from deploy/kubernetes (test/cluster/overlay) on a real node: kubelet,
# containerd and kube-proxy in the VM rig, the control plane on the host (hack/cluster.sh; with
# the snapshot CRDs and snapshot-controller, and an lvm-thin pool on a second VM disk),
# then the pod scenarios of test/cluster against it (snapshot-restore: issue 14 with real pods). -test.parallel=2: the independent scenarios
# run in pairs, as in the measured passing run (more pods at once on the emulated 2-CPU node is
# untested: pod starts took 100-260 s in pairs on a slow CI host, against a 10 min limit).
.PHONY: test-cluster
test-cluster:
	CGO_ENABLED=0 $(GO) test -c -o _output/cluster.test ./test/cluster/
	hack/cluster.sh -- _output/cluster.test -test.v -test.count=1 -test.timeout=65m -test.parallel=2

# LVM create+delete against the bare tools and carve-node's memory footprint (test/bench;
# the footprint needs the control-plane binaries, CARVE_K8S_BIN or CARVE_K8S_CACHE), the
# controller burst, then the node path in the VM rig (boots it: about 15 minutes under TCG).
bench:
	$(GO) test -run XXX -bench . -benchtime 1x -timeout 20m ./pkg/backend/lvm/ ./test/bench/
	$(MAKE) bench-controller
	$(MAKE) bench-nodepath
	$(MAKE) bench-wipe

# What zeroing 1 GiB costs in the VM rig per method (blkdiscard -z, dd, thin pool zeroing, PMEM):
# test/disks BenchmarkVMWipeCost, one boot with the six extra disks (about 4 minutes).
.PHONY: bench-wipe
bench-wipe:
	test/disks/run-vm.sh -- -test.run XXX -test.bench VMWipeCost -test.benchtime 1x -test.v

# The controller under a burst on a real API server (README, "Scale"): about 90 s.
.PHONY: bench-controller
bench-controller:
	$(GO) test -run XXX -bench ControllerBurst -benchtime 1x -timeout 15m ./test/integration/

# carve's controller path at cluster scale on the control-plane rig (README, "Scale"): 1000 pods
# over 100 simulated nodes with and without volumes, controller vs distributed mode, a burst
# that fits only if spread, API requests per volume, idle NodeStorage writes; StorageCapacityScoring
# on and off. Not part of make test. Sizes: CARVE_SCALE_* (test/scale/env_test.go).
.PHONY: bench-scale
bench-scale:
	$(GO) test -run XXX -bench Scale -benchtime 1x -timeout 60m ./test/scale/

# The node path in the QEMU VM (README, "Scale"): an inline volume's publish + unpublish
# against the same tools run bare, ext4 and xfs, and PMEM CreateVolume + DeleteVolume against
# bare ndctl (and the same wipe), as ratios. Boots the VM rig once (hack/bench-vm.sh).
.PHONY: bench-nodepath
bench-nodepath:
	hack/bench-vm.sh

# Every fuzz target for FUZZTIME each (hack/fuzz.sh); fuzz-short is the quick pass make test runs.
FUZZTIME ?= 30s
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) hack/fuzz.sh

.PHONY: fuzz-short
fuzz-short:
	GO=$(GO) FUZZTIME=5s hack/fuzz.sh

# The storage capacity story on a real control plane built from source (three
# simulated nodes on loop devices), then an inline volume through the node
# service (in the VM rig when this kernel has no device-mapper). Needs root.
demo: deps
	hack/demo.sh

# carve's runtime image: `docker build` where a Docker engine runs, else an OCI archive
# _output/images/carve-csi.tar built without one (hack/image/build.sh; needs root for debootstrap).
image:
	@if docker info >/dev/null 2>&1; then docker build --build-arg VERSION=$(VERSION) -t ghcr.io/carve-csi/carve-csi:$(VERSION) .; \
	else CARVE_IMAGE_TAG=$${CARVE_IMAGE_TAG:-$(VERSION)} hack/image/build.sh carve-csi; fi

# Every image the cluster test imports, as OCI archives in _output/images/ (listed in images.txt):
# carve-csi, the sidecars built from source, carve's registrar/livenessprobe STAND-INS, pause, busybox.
.PHONY: images
images:
	CARVE_IMAGE_TAG=$${CARVE_IMAGE_TAG:-$(VERSION)} hack/image/build.sh

clean:
	rm -rf _output

CONTROLLER_GEN := $(GO) run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0
# Deep-copy functions and CRD manifests from the Go types in pkg/apis.
generate:
	$(CONTROLLER_GEN) object crd paths=./pkg/apis/... output:crd:artifacts:config=deploy/kubernetes/base/crds
	cp deploy/kubernetes/base/crds/*.yaml deploy/helm/carve/crds/ # the chart's CRDs (test/manifests/helm_test.go compares the bytes)
