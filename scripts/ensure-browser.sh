#!/bin/sh
# The opt-out browser test (tests/e2e/test_optout_browser.py) drives Debian's
# headless Chromium over the DevTools protocol; Japanese fonts make its
# screenshots readable. As root, install what is missing; otherwise say what
# to install (the test then skips itself). Never fails `make test`.
set -u
packages="chromium fonts-ipafont-gothic"
missing=""
for package in $packages; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $package"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "ensure-browser: installing$missing (for the opt-out browser test)" >&2
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y -qq --no-install-recommends $missing >&2 \
        || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends $missing >&2; } \
        || echo "ensure-browser: could not install$missing; the browser test will be skipped" >&2
else
    echo "ensure-browser: missing$missing; the opt-out browser test will be skipped" \
        "(as root: apt-get install --no-install-recommends$missing)" >&2
fi
exit 0
