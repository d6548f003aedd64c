#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium (the HTML report's
# screenshot test uses it; without it that test skips). Installs the `chromium` package when
# missing and apt-get is available. Diagnostics go to stderr; prints the binary's path.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then echo /usr/bin/chromium; exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "chromium is missing and apt-get is not available: install Chromium so /usr/bin/chromium exists" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing Debian's chromium package" >&2
($sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium) >&2
if [ ! -x /usr/bin/chromium ]; then
  echo "apt-get finished but /usr/bin/chromium is still missing" >&2
  exit 1
fi
echo /usr/bin/chromium
