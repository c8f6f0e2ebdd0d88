#!/usr/bin/env bash
# Builds (or reuses) the control plane that `make test-k8s` starts, under .tools/k8s/
# (or $K8S_TOOLS_DIR):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd                            (go.etcd.io/etcd/server/v3, the version Kubernetes requires)
#   kwok                                                               (sigs.k8s.io/kwok)
#   metrics-server                                                     (sigs.k8s.io/metrics-server)
#   crds/*.yaml: the prometheus-operator and KEDA CRDs, from their published Go modules
# Everything comes from the Go module proxy (no container, no release download), pinned
# below, in one place. Each piece is rebuilt only when its version changes (a stamp file
# per piece). The first run compiles Kubernetes, etcd, kwok and metrics-server: 22 minutes
# of CPU, 32 minutes of wall time measured on a busy 2-core machine (k8s/README.md); with a
# warm Go build cache (~/.cache/go-build, from any checkout) it only links, under a minute.
#
# What keeps that down: one `go build` for Kubernetes' four binaries and etcd (their
# shared packages compile once); kwok, metrics-server and the CRD downloads run beside it
# in the background (their downloads and compiles fill the time the Kubernetes build
# waits on the network or on one long package); -trimpath (cache hits from any checkout)
# and -ldflags='-s -w' (no symbol tables: less to link and write).
set -euo pipefail

KUBE_VERSION=v1.33.13
KWOK_VERSION=v0.7.0
METRICS_SERVER_VERSION=v0.8.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
KEDA_VERSION=v2.17.2

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${K8S_TOOLS_DIR:-$ROOT/.tools/k8s}"
mkdir -p "$OUT/bin" "$OUT/crds" "$OUT/src" "$OUT/logs"
command -v go >/dev/null || { echo "go not found: the control plane is built from the Go module proxy; install Go 1.24+ (https://go.dev/dl/)"; exit 1; }

export GOWORK=off CGO_ENABLED=0
# -buildvcs=false: the sources sit inside tandem's git checkout; stamp nothing from it.
FLAGS=(-trimpath -buildvcs=false)
fresh() { [ "$(cat "$OUT/.$1.stamp" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$OUT/.$1.stamp"; }
# The module's directory in the module cache (downloaded if needed), or a clear error.
moddir() {
	local json dir
	json="$(go mod download -json "$1@$2" 2>&1)" || true
	dir="$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$json")"
	[ -n "$dir" ] || { echo "could not download $1@$2 from the Go module proxy: $json" >&2; return 1; }
	echo "$dir"
}

# --- Background pieces: each in its own process group (set -m), logging to logs/KEY.log,
# waited for at the end. If this script fails or is interrupted, they are stopped.
set -m
background=()
background() {
	local key=$1 what=$2
	shift 2
	echo "==> $what: started in the background (log: $OUT/logs/$key.log)"
	"$@" </dev/null >"$OUT/logs/$key.log" 2>&1 &
	background+=("$key:$!:$what")
}
stop_background() {
	local job pid
	for job in ${background[@]+"${background[@]}"}; do
		pid=${job#*:} pid=${pid%%:*}
		kill -TERM -- "-$pid" 2>/dev/null || true
	done
}
trap stop_background EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

go_install() { # NAME VERSION PACKAGE@VERSION
	set -e
	GOBIN="$OUT/bin" go install "${FLAGS[@]}" -ldflags "-s -w" "$3"
	stamp "$1" "$2"
}
if ! fresh kwok "$KWOK_VERSION"; then
	background kwok "kwok $KWOK_VERSION" \
		go_install kwok "$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi
if ! fresh metrics-server "$METRICS_SERVER_VERSION"; then
	background metrics-server "metrics-server $METRICS_SERVER_VERSION" go_install metrics-server \
		"$METRICS_SERVER_VERSION" "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
fi

# --- The CRDs the optional components need, as their projects publish them; kwok's
# resource-usage CRDs and its kubelet-like metrics definition (for metrics-server).
crds() {
	set -e
	rm -f "$OUT"/crds/*.yaml
	local kwok po keda kind
	kwok="$(moddir sigs.k8s.io/kwok "$KWOK_VERSION")"
	for kind in clusterresourceusages resourceusages; do
		cp "$kwok/kustomize/crd/bases/kwok.x-k8s.io_$kind.yaml" "$OUT/crds/"
	done
	mkdir -p "$OUT/kwok"
	cp "$kwok/kustomize/metrics/resource/metrics-resource.yaml" "$OUT/kwok/"
	chmod u+w "$OUT/kwok/"*.yaml
	po="$(moddir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")"
	for kind in servicemonitors prometheusrules; do
		cp "$po/example/prometheus-operator-crd-full/monitoring.coreos.com_$kind.yaml" "$OUT/crds/"
	done
	keda="$(moddir github.com/kedacore/keda/v2 "$KEDA_VERSION")"
	for kind in scaledobjects triggerauthentications clustertriggerauthentications; do
		cp "$keda/config/crd/bases/keda.sh_$kind.yaml" "$OUT/crds/"
	done
	chmod u+w "$OUT"/crds/*.yaml
	stamp crds "$crd_key"
}
crd_key="$PROMETHEUS_OPERATOR_VERSION $KEDA_VERSION $KWOK_VERSION"
if ! fresh crds "$crd_key"; then
	background crds "the prometheus-operator $PROMETHEUS_OPERATOR_VERSION and KEDA $KEDA_VERSION CRDs" crds
fi

# --- Kubernetes and etcd, in one `go build`. `go install k8s.io/kubernetes/cmd/...` does
# not work: its go.mod points every k8s.io/* staging module at ./staging/src/..., which the
# module zip does not carry. So: copy the module tree, point each of those replaces at the
# published module of the same release (v0.33.x for v1.33.x), and build with -mod=mod (no
# vendor/, no go.work). etcd is the server/v3 version that Kubernetes' go.mod requires,
# built with Kubernetes' dependency versions (the combination Kubernetes compiles and
# tests its embedded etcd with; it adds no module to Kubernetes' build), so the packages
# they share (gRPC, protobuf, OpenTelemetry, Prometheus, zap...) compile once.
if ! fresh kube "$KUBE_VERSION"; then
	src="$OUT/src/kubernetes-$KUBE_VERSION"
	if [ ! -f "$src/.prepared" ]; then
		echo "==> downloading Kubernetes $KUBE_VERSION from the Go module proxy"
		rm -rf "$src"
		module="$(moddir k8s.io/kubernetes "$KUBE_VERSION")"
		cp -r "$module" "$src"
		chmod -R u+w "$src"
		rm -rf "$src/vendor" "$src/go.work" "$src/go.work.sum"
		staging_version="v0.${KUBE_VERSION#v1.}"
		(cd "$src" && sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' go.mod |
			while read -r mod; do go mod edit -replace "$mod=$mod@$staging_version"; done)
		touch "$src/.prepared"
	fi
	etcd_version="$(cd "$src" && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
	echo "==> building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $KUBE_VERSION and etcd $etcd_version"
	echo "    (the first build compiles Kubernetes: 22 minutes of CPU, 11+ minutes on 2 idle cores, longer on"
	echo "    a busy machine; with a warm Go build cache it only links, about a minute)"
	pkg=k8s.io/component-base/version
	cli=k8s.io/client-go/pkg/version
	minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
	ldflags="-s -w"
	for p in $pkg $cli; do
		ldflags="$ldflags -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
	done
	(cd "$src" && GOFLAGS=-mod=mod go build "${FLAGS[@]}" -ldflags "$ldflags" -o "$OUT/bin/" \
		./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubectl \
		go.etcd.io/etcd/server/v3)
	mv "$OUT/bin/server" "$OUT/bin/etcd" # named after its package path (server/v3)
	stamp kube "$KUBE_VERSION"
fi

# --- Wait for the background pieces; a failed one fails the build, with its log.
failed=0
for job in ${background[@]+"${background[@]}"}; do
	key=${job%%:*} pid=${job#*:} what=${pid#*:} pid=${pid%%:*}
	if wait "$pid"; then
		echo "==> $what: done"
	else
		failed=1
		echo "==> $what: FAILED; the end of $OUT/logs/$key.log:" >&2
		tail -n 40 "$OUT/logs/$key.log" >&2
	fi
done
background=()
[ "$failed" = 0 ] || exit 1
echo "==> control-plane tools ready in $OUT"
