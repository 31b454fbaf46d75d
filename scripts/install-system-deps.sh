#!/usr/bin/env bash
# Install the system programs the mirror and its tests use. Idempotent and quiet when
# everything is there already. Debian/Ubuntu (apt) and EL/Fedora (dnf) are supported.
set -euo pipefail

DEB_PKGS=(skopeo createrepo-c rpm dnf dnf-plugins-core docker-registry gnupg containerd
          shellcheck curl ca-certificates python3-venv chromium nginx-light systemd wrk
          apache2-utils libarchive-tools cpio)
# EL names: the registry is docker-distribution (EPEL); rpm-build/rpm-sign carry rpmbuild.
EL_PKGS=(skopeo createrepo_c rpm-build rpm-sign dnf-plugins-core gnupg2 containerd
         docker-distribution ShellCheck curl python3 nginx chromium wrk httpd-tools bsdtar cpio)

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    missing=()
    for p in "${DEB_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing system packages: ${missing[*]}"
        sudo_ apt-get update -qq
        sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
elif command -v rpm >/dev/null 2>&1 && command -v dnf >/dev/null 2>&1; then
    missing=()
    for p in "${EL_PKGS[@]}"; do rpm -q "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing system packages: ${missing[*]} (docker-distribution needs EPEL)"
        sudo_ dnf install -y -q "${missing[@]}"
    fi
else
    echo "install-system-deps: unsupported system; install by hand: ${DEB_PKGS[*]}" >&2
    exit 1
fi
