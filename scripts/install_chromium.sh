#!/usr/bin/env bash
# Debian's chromium and one font, for tests/test_report_browser.py (which calls it only where the tests
# may install system packages: PEFTBENCH_TEST_INSTALL=1).
#
#   scripts/install_chromium.sh           # install what is missing; nothing to do when both are there
#   scripts/install_chromium.sh missing   # print the packages it would install (none: empty line)
#
# Needs root on Debian or Ubuntu. apt's output goes to $PEFTBENCH_APT_LOG (a temporary file by default),
# shown only when the install fails.
set -euo pipefail

PACKAGES=(chromium fonts-dejavu-core)  # the font: the page's text, readable in the screenshot

log() { echo "install_chromium: $*" >&2; }
die() { log "error: $*"; exit 1; }

missing_packages() { # the packages of PACKAGES not installed, one line
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    echo "${missing[*]}"
}

install() {
    local missing
    read -r -a missing <<<"$(missing_packages)"
    [[ ${#missing[@]} -eq 0 ]] && return
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install chromium yourself"
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}: installing needs root"
    local apt_log=${PEFTBENCH_APT_LOG:-$(mktemp -t install_chromium.XXXXXX)}
    log "installing ${missing[*]}"
    apt-get update -qq >"$apt_log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1 \
        || { tail -20 "$apt_log" >&2; die "apt-get install failed (see $apt_log)"; }
    [[ -z ${PEFTBENCH_APT_LOG:-} ]] && rm -f "$apt_log"
    return 0
}

case ${1:-install} in
    install) install ;;
    missing) missing_packages ;;
    *) echo "usage: $0 [install|missing]" >&2; exit 2 ;;
esac
