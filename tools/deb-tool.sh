#!/usr/bin/env bash
# deb-tool.sh DIR PACKAGE PATH... — put programs from a Debian package into DIR/bin
# without installing the package.
#
# Some test tools come only inside packages that also ship a service: Debian's
# `prometheus` holds promtool next to the Prometheus server (whose postinst enables and
# starts prometheus.service on :9090), `haproxy` starts a haproxy.service. The tests need
# the command-line tool, not the service, so this downloads the .deb (apt-get download:
# no maintainer scripts run, nothing is registered with dpkg), extracts it into
# a temporary directory and copies each PATH (as laid out in the package, e.g.
# usr/bin/promtool) into DIR/bin. The shared libraries such a tool links against are ordinary library packages;
# the Makefile installs them with apt (TOOL_LIB_PKGS).
#
# Does nothing for a PATH already in DIR/bin. Needs `apt-get update` to have run once.
set -euo pipefail
dir=$1 pkg=$2
shift 2
mkdir -p "$dir/bin"
need=()
for p in "$@"; do
  [ -x "$dir/bin/$(basename "$p")" ] || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null) || {
  echo "deb-tool: cannot download Debian package $pkg (run apt-get update?)" >&2
  exit 1
}
mkdir -p "$tmp/root"
dpkg-deb -x "$tmp"/"${pkg}"_*.deb "$tmp/root"
for p in "${need[@]}"; do
  if [ ! -x "$tmp/root/$p" ]; then
    echo "deb-tool: $pkg has no $p" >&2
    exit 1
  fi
  install -m 0755 "$tmp/root/$p" "$dir/bin/$(basename "$p")"
  { "$dir/bin/$(basename "$p")" --version || "$dir/bin/$(basename "$p")" -v; } >/dev/null 2>&1 || {
    echo "deb-tool: $dir/bin/$(basename "$p") does not run (missing shared libraries?)" >&2
    ldd "$dir/bin/$(basename "$p")" 2>&1 | grep 'not found' >&2 || true
    exit 1
  }
  echo "deb-tool: $dir/bin/$(basename "$p") from $pkg"
done
