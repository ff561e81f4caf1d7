#!/usr/bin/env bash
# Builds kube-apiserver from Debian's source package `kubernetes` with Debian's own Go, for the
# e2e tests' real API server. Called by envtest.sh (`make envtest`), which has already installed
# golang-go, rsync, jq and dpkg-dev and made a deb-src entry; run it by hand only for that.
#
#   build-kube-apiserver.sh CACHE_DIR VERSION
#
# Writes CACHE_DIR/VERSION/kube-apiserver (atomically: a killed build never leaves a binary the
# cache check would take) and keeps the Go build cache in CACHE_DIR/gocache, so a rebuild with the
# same source takes seconds. The source is unpacked under CACHE_DIR/build/ and kept for the same
# reason. ≈ 4 min cold on 2 cores.
set -euo pipefail

cache_dir=${1:?usage: build-kube-apiserver.sh CACHE_DIR VERSION}
version=${2:?usage: build-kube-apiserver.sh CACHE_DIR VERSION}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build_dir=$cache_dir/build
out=$cache_dir/$version/kube-apiserver

log() { echo "build-kube-apiserver: $*" >&2; }

# --- the source -------------------------------------------------------------------------------
# Debian versions it `1.20.5+really1.20.2-…`: upstream 1.20.2 (the `really` part) with Debian's
# patches (CVE fixes) on top. Refuse anything but the version the caller caches it as, so the
# cache path never lies about what is in it.
src_version=$(apt-cache showsrc kubernetes | sed -n 's/^Version: //p' | sort -V | tail -n 1)
if [ -z "$src_version" ]; then
	log "apt knows no source package 'kubernetes' (deb-src entry?)"
	exit 1
fi
upstream=${src_version%%-*}
upstream=${upstream##*really}
if [ "$upstream" != "$version" ]; then
	log "Debian's source package kubernetes is $src_version (upstream $upstream), not $version"
	exit 1
fi

src_root=$build_dir/$src_version/src
if [ ! -e "$src_root/.nodelet-unpacked" ]; then
	log "fetching and unpacking kubernetes $src_version"
	rm -rf "${build_dir:?}/$src_version"
	mkdir -p "$build_dir/$src_version"
	# Sandbox user root: apt's _apt user cannot write into this root-only cache dir. `apt-get
	# source` (not --download-only) runs dpkg-source -x, which applies Debian's patches.
	(cd "$build_dir/$src_version" \
		&& apt-get source -qq -o APT::Sandbox::User=root "kubernetes=$src_version" >/dev/null)
	mv "$build_dir/$src_version/kubernetes-${src_version%%-*}" "$src_root"
	touch "$src_root/.nodelet-unpacked"
fi

# --- Go in GOPATH mode ------------------------------------------------------------------------
# Module mode with -mod=vendor fails under Debian's Go 1.19 (the 1.20 tree's vendor/modules.txt
# and its staging replace directives do not satisfy 1.19's consistency checks), so build the way
# Kubernetes 1.20 itself did: GOPATH mode, the tree at $GOPATH/src/k8s.io/kubernetes, vendored
# packages resolved as k8s.io/kubernetes/vendor/... Debian's own debian/rules does the same.
gopath=$build_dir/$src_version/gopath
mkdir -p "$gopath/src/k8s.io"
ln -sfn "$src_root" "$gopath/src/k8s.io/kubernetes"
export GOPATH=$gopath GO111MODULE=off GOFLAGS='' GOPROXY=off
# A static binary: no cgo toolchain needed, and it runs on any machine of this kind.
export CGO_ENABLED=0
export GOCACHE=$cache_dir/gocache
pkg=k8s.io/kubernetes
# `go` must see the tree through the GOPATH link, or it cannot tell the import path of `.`.
cd "$gopath/src/$pkg"

# --- the generated OpenAPI definitions --------------------------------------------------------
# The orig tarball lacks pkg/generated/openapi/zz_generated.openapi.go (upstream generates it at
# build time), and without it the build stops at "undefined: openapi.GetOpenAPIDefinitions".
# Generate it as Makefile.generated_files would, with the vendored openapi-gen and the packages
# that carry a `+k8s:openapi-gen=` tag (k8s-VERSION-openapi-gen-inputs.txt beside this script,
# relative to the source root). Every other generated file ships in the tarball.
openapi_out=pkg/generated/openapi/zz_generated.openapi.go
if [ ! -s "$openapi_out" ]; then
	log "building openapi-gen and generating $openapi_out"
	go build -trimpath -o "$build_dir/$src_version/openapi-gen" \
		"$pkg/vendor/k8s.io/kube-openapi/cmd/openapi-gen"
	inputs=$(sed -e '/^[[:space:]]*$/d' -e "s|^|$pkg/|" \
		"$here/k8s-$version-openapi-gen-inputs.txt" | paste -sd, -)
	report=$build_dir/$src_version/violations.report
	# GOROOT set explicitly: a -trimpath binary has no GOROOT of its own, and openapi-gen parses
	# the standard library's sources (time.Duration fields), failing with "invalid type" without.
	GOROOT=$(go env GOROOT) "$build_dir/$src_version/openapi-gen" \
		--input-dirs "$inputs" \
		--output-package "$pkg/pkg/generated/openapi" \
		--output-base "$gopath/src" \
		--output-file-base zz_generated.openapi \
		--go-header-file hack/boilerplate/boilerplate.generatego.txt \
		--report-filename "$report"
	# The API-rule report equals upstream's known list exactly when the inputs are the right
	# ones: a missing or extra package shows here instead of as a subtly different API server.
	if ! diff -u api/api-rules/violation_exceptions.list "$report" >&2; then
		rm -f "$openapi_out"
		log "openapi-gen's API-rule report differs from api/api-rules/violation_exceptions.list"
		exit 1
	fi
fi

# --- kube-apiserver ---------------------------------------------------------------------------
# The version variables hack/lib/version.sh sets, so `kube-apiserver --version` and the server's
# /version say 1.20.2 (the Python client and kubectl read them); no git commit in a tarball.
ldflags="-s -w"
for var in gitVersion=v$version gitMajor=${version%%.*} gitMinor=$(echo "$version" | cut -d. -f2) \
	gitTreeState=archive buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ); do
	ldflags+=" -X $pkg/vendor/k8s.io/component-base/version.$var"
	ldflags+=" -X $pkg/vendor/k8s.io/client-go/pkg/version.$var"
done
log "building kube-apiserver $version (GOCACHE $GOCACHE)"
mkdir -p "$(dirname "$out")"
go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg/cmd/kube-apiserver"
"$out.tmp" --version
mv -f "$out.tmp" "$out"
log "installed $out"
