#!/usr/bin/env bash
# Build the Go interop checker (tests/interop/checker) from Debian packages only.
#
# Installs the Debian Go toolchain and the Debian-packaged estargz Go library
# when they are missing, then compiles the checker offline in GOPATH mode.
# The binary goes to ${ESTARGZ_CHECKER_DIR:-$HOME/.cache/estargz-checker}/estargz-checker
# and is rebuilt only when a Go source file is newer than it.
# The last line printed on stdout is the path of the binary; everything else
# goes to stderr.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src_dir="$script_dir/checker"
out_dir="${ESTARGZ_CHECKER_DIR:-$HOME/.cache/estargz-checker}"
binary="$out_dir/estargz-checker"

# golang-github-containerd-stargz-snapshotter-dev pulls in the rest of the
# library's dependencies; the packages the checker imports directly are
# listed as well.
packages=(
    golang-go
    golang-github-containerd-stargz-snapshotter-dev
    golang-github-containers-storage-dev
    golang-github-klauspost-compress-dev
    golang-github-opencontainers-go-digest-dev
    golang-golang-x-sync-dev
)

log() { printf 'build_checker: %s\n' "$*" >&2; }

missing=()
for pkg in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    log "installing Debian packages: ${missing[*]}"
    if [[ "$(id -u)" -eq 0 ]]; then
        sudo_cmd=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo_cmd=(sudo)
    else
        log "not root and sudo is unavailable; install ${missing[*]} first"
        exit 1
    fi
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >&2
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi

# Use the Debian toolchain even when another Go is first on PATH.
go_bin=/usr/lib/go/bin/go
if [[ ! -x "$go_bin" ]]; then
    go_bin="$(command -v go)"
fi

needs_build=0
if [[ ! -x "$binary" ]]; then
    needs_build=1
else
    for src in "$src_dir"/*.go; do
        if [[ "$src" -nt "$binary" ]]; then
            needs_build=1
            break
        fi
    done
fi

if ((needs_build)); then
    mkdir -p "$out_dir"
    tmp_bin="$(mktemp "$out_dir/.estargz-checker.XXXXXX")"
    trap 'rm -f "$tmp_bin"' EXIT
    log "building $binary with $("$go_bin" version)"
    (
        cd "$src_dir"
        env GO111MODULE=off \
            GOPATH=/usr/share/gocode \
            GOFLAGS= \
            GOPROXY=off \
            CGO_ENABLED=0 \
            GOCACHE="$out_dir/gocache" \
            "$go_bin" build -trimpath -o "$tmp_bin" .
    ) >&2
    chmod 0755 "$tmp_bin"
    mv -f "$tmp_bin" "$binary"
    trap - EXIT
else
    log "up to date: $binary"
fi

printf '%s\n' "$binary"
