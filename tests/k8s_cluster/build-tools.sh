#!/usr/bin/env bash
# Builds (or reuses) the control plane that `make test-k8s` starts, under .tools/k8s/:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd                                                               (go.etcd.io/etcd)
#   kwok                                                               (sigs.k8s.io/kwok)
#   metrics-server                                                     (sigs.k8s.io/metrics-server)
#   crds/*.yaml: the prometheus-operator and KEDA CRDs, from their published Go modules
# Everything comes from the Go module proxy (no container, no release download), pinned
# below, in one place. Each piece is rebuilt only when its version changes (a stamp file
# per piece). The first run compiles Kubernetes, etcd, kwok and metrics-server: 20 minutes
# or more on 2 cores, over an hour on a busy shared machine.
set -euo pipefail

KUBE_VERSION=v1.33.13
ETCD_VERSION=v3.5.21
KWOK_VERSION=v0.7.0
METRICS_SERVER_VERSION=v0.8.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
KEDA_VERSION=v2.17.2

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${K8S_TOOLS_DIR:-$ROOT/.tools/k8s}"
mkdir -p "$OUT/bin" "$OUT/crds" "$OUT/src"
command -v go >/dev/null || { echo "go not found: the control plane is built from the Go module proxy; install Go 1.24+ (https://go.dev/dl/)"; exit 1; }

export GOWORK=off CGO_ENABLED=0
fresh() { [ "$(cat "$OUT/.$1.stamp" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$OUT/.$1.stamp"; }
moddir() { go mod download -json "$1@$2" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'; }

# --- Kubernetes. `go install k8s.io/kubernetes/cmd/...` does not work: its go.mod points
# every k8s.io/* staging module at ./staging/src/..., which the module zip does not carry.
# So: copy the module tree, point each of those replaces at the published module of the
# same release (v0.33.x for v1.33.x), and build with -mod=mod (no vendor/, no go.work).
if ! fresh kube "$KUBE_VERSION"; then
	echo "==> building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $KUBE_VERSION"
	echo "    (the first build compiles Kubernetes from the Go module proxy: 20 minutes or more on 2 cores)"
	src="$OUT/src/kubernetes-$KUBE_VERSION"
	if [ ! -f "$src/.prepared" ]; then
		rm -rf "$src"
		cp -r "$(moddir k8s.io/kubernetes "$KUBE_VERSION")" "$src"
		chmod -R u+w "$src"
		rm -rf "$src/vendor" "$src/go.work" "$src/go.work.sum"
		staging_version="v0.${KUBE_VERSION#v1.}"
		(cd "$src" && sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' go.mod |
			while read -r mod; do go mod edit -replace "$mod=$mod@$staging_version"; done)
		touch "$src/.prepared"
	fi
	pkg=k8s.io/component-base/version
	cli=k8s.io/client-go/pkg/version
	minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
	ldflags="-s -w"
	for p in $pkg $cli; do
		ldflags="$ldflags -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
	done
	(cd "$src" && GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$OUT/bin/" \
		./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubectl)
	stamp kube "$KUBE_VERSION"
fi

# --- etcd: server/v3's go.mod also has local replaces, so it is built as a dependency of a
# throwaway module (replaces in dependencies are ignored; the published modules are used).
if ! fresh etcd "$ETCD_VERSION"; then
	echo "==> building etcd $ETCD_VERSION (a minute or two)"
	w="$OUT/src/etcd-$ETCD_VERSION"
	rm -rf "$w" && mkdir -p "$w"
	(cd "$w" && go mod init tandem-etcd-build >/dev/null 2>&1 &&
		go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 &&
		GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$OUT/bin/etcd" go.etcd.io/etcd/server/v3)
	stamp etcd "$ETCD_VERSION"
fi

if ! fresh kwok "$KWOK_VERSION"; then
	echo "==> building kwok $KWOK_VERSION"
	GOBIN="$OUT/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
	stamp kwok "$KWOK_VERSION"
fi

if ! fresh metrics-server "$METRICS_SERVER_VERSION"; then
	echo "==> building metrics-server $METRICS_SERVER_VERSION"
	GOBIN="$OUT/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
	stamp metrics-server "$METRICS_SERVER_VERSION"
fi

# --- The CRDs the optional components need, as their projects publish them; kwok's
# resource-usage CRDs and its kubelet-like metrics definition (for metrics-server).
crd_key="$PROMETHEUS_OPERATOR_VERSION $KEDA_VERSION $KWOK_VERSION"
if ! fresh crds "$crd_key"; then
	echo "==> fetching the prometheus-operator $PROMETHEUS_OPERATOR_VERSION and KEDA $KEDA_VERSION CRDs"
	rm -f "$OUT"/crds/*.yaml
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
fi
echo "==> control-plane tools ready in $OUT"
