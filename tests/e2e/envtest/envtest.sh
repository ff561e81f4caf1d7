#!/usr/bin/env bash
# `make envtest`: what the e2e tests need to run a real API server, installed once per machine.
#
#   envtest.sh CACHE_DIR VERSION
#
# - Debian's etcd-server (etcd) and kubernetes-client (kubectl 1.20), only when missing;
# - CACHE_DIR/VERSION/kubectl: Debian's kubectl, which the test fixture runs;
# - CACHE_DIR/VERSION/kube-apiserver, built from Debian's source package by
#   build-kube-apiserver.sh, unless it is cached or a kube-apiserver of at least VERSION is on
#   PATH (the fixture then uses that one). Only a build needs golang-go, rsync, jq, dpkg-dev and
#   a deb-src entry, so only a build installs them.
# `apt-get update` runs at most once, and only when something is missing. Idempotent; concurrent
# runs on one machine wait for each other.
set -euo pipefail

cache_dir=${1:?usage: envtest.sh CACHE_DIR VERSION}
version=${2:?usage: envtest.sh CACHE_DIR VERSION}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin_dir=$cache_dir/$version
deb_src=/etc/apt/sources.list.d/nodelet-deb-src.sources
export DEBIAN_FRONTEND=noninteractive

log() { echo "make envtest: $*" >&2; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

if [ "$(id -u)" -ne 0 ]; then
	log "needs root (apt-get, and the cache in $cache_dir)"
	exit 1
fi
mkdir -p "$bin_dir"
exec 9>"$cache_dir/.lock"
flock 9

# True when kube-apiserver on PATH reports a version >= $version ("Kubernetes v1.27.3").
newer_on_path() {
	local found
	command -v kube-apiserver >/dev/null || return 1
	found=$(kube-apiserver --version 2>/dev/null | sed -n 's/^Kubernetes v\([0-9][0-9.]*\).*/\1/p')
	[ -n "$found" ] || return 1
	[ "$(printf '%s\n%s\n' "$version" "$found" | sort -V | head -n 1)" = "$version" ]
}

need_build=0
if [ ! -x "$bin_dir/kube-apiserver" ]; then
	if newer_on_path; then
		log "using $(command -v kube-apiserver) ($(kube-apiserver --version)), not building $version"
	else
		need_build=1
	fi
fi

# /usr/bin/kubectl may belong to another package (machines of this kind ship Google Cloud SDK's
# kubectl 1.32 there); installing kubernetes-client would then fail on the file conflict, and
# replacing that kubectl is not ours to do. Debian's kubectl is then unpacked into the cache.
kubectl_owner=$(dpkg-query -S /usr/bin/kubectl 2>/dev/null | cut -d: -f1 || true)
kubectl_pkg_ok=1
if [ -n "$kubectl_owner" ] && [ "$kubectl_owner" != kubernetes-client ]; then
	kubectl_pkg_ok=0
fi

wanted=(etcd-server)
[ "$kubectl_pkg_ok" = 1 ] && wanted+=(kubernetes-client)
[ "$need_build" = 1 ] && wanted+=(golang-go rsync jq dpkg-dev)
missing=()
for pkg in "${wanted[@]}"; do installed "$pkg" || missing+=("$pkg"); done

update=0
[ "${#missing[@]}" -gt 0 ] && update=1
if [ "$kubectl_pkg_ok" = 0 ] && [ ! -x "$bin_dir/kubectl" ]; then
	update=1
fi
if [ "$need_build" = 1 ]; then
	# The machine's own deb entries, as deb-src: the same mirror and suites, in a file of ours.
	if [ ! -e "$deb_src" ]; then
		log "adding $deb_src"
		sed -e 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$deb_src.tmp"
		mv "$deb_src.tmp" "$deb_src"
		update=1
	fi
	[ -n "$(apt-cache showsrc kubernetes 2>/dev/null)" ] || update=1
fi

if [ "$update" = 1 ]; then
	log "apt-get update"
	apt-get update -qq
fi
if [ "${#missing[@]}" -gt 0 ]; then
	log "installing ${missing[*]}"
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
	# On a machine booted with systemd, etcd-server's postinst starts a system etcd on 2379; the
	# tests run their own on free ports, so the one installed here is not left running.
	if [[ " ${missing[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
		systemctl disable --now etcd.service || log "could not stop and disable etcd.service"
	fi
fi

if [ "$kubectl_pkg_ok" = 1 ]; then
	ln -sfn /usr/bin/kubectl "$bin_dir/kubectl"
elif [ ! -x "$bin_dir/kubectl" ]; then
	log "/usr/bin/kubectl belongs to $kubectl_owner: unpacking Debian's kubectl into $bin_dir"
	tmp=$(mktemp -d "$cache_dir/kubectl.XXXXXX")
	(cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root kubernetes-client)
	dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$tmp/root"
	mv "$tmp/root/usr/bin/kubectl" "$bin_dir/kubectl"
	rm -rf "$tmp"
fi

if [ "$need_build" = 1 ]; then
	"$here/build-kube-apiserver.sh" "$cache_dir" "$version"
fi
log "ready: $bin_dir"
