#!/usr/bin/env bash
# Build tests/interop/sigcheck (Go's crypto and Debian's golang.org/x/crypto, offline, GOPATH
# mode), installing the Debian packages when they are missing (root). The last line printed on
# stdout is the path of the binary.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src_dir="$script_dir/sigcheck"
out_dir="${ESTARGZ_CHECKER_DIR:-$HOME/.cache/estargz-checker}"
binary="$out_dir/estargz-sigcheck"
packages=(golang-go golang-golang-x-crypto-dev)

missing=()
for pkg in "${packages[@]}"; do
    if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)" != "installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} > 0)); then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "build_sigcheck: not root; install ${missing[*]} first" >&2
        exit 1
    fi
    env DEBIAN_FRONTEND=noninteractive apt-get update >&2
    env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi

go_bin=/usr/lib/go/bin/go
[[ -x "$go_bin" ]] || go_bin="$(command -v go)"
if [[ ! -x "$binary" || "$src_dir/main.go" -nt "$binary" ]]; then
    mkdir -p "$out_dir"
    tmp_bin="$(mktemp "$out_dir/.estargz-sigcheck.XXXXXX")"
    trap 'rm -f "$tmp_bin"' EXIT
    (
        cd "$src_dir"
        env GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOPROXY=off CGO_ENABLED=0 \
            GOCACHE="$out_dir/gocache" "$go_bin" build -trimpath -o "$tmp_bin" .
    ) >&2
    chmod 0755 "$tmp_bin"
    mv -f "$tmp_bin" "$binary"
    trap - EXIT
fi
printf '%s\n' "$binary"
