#!/usr/bin/env bash
# Make `promtool` available for the alert-rule tests (tests/unit/test_metrics_alerts.py):
#   1. promtool already on PATH: nothing to do;
#   2. else, as root with apt-get: install Debian's `prometheus` package, which ships promtool
#      (the server is installed too; this script does not start it).
# Never fails the build: without promtool the promtool tests skip (with the reason) and the
# YAML-structure tests still run. Diagnostics go to stderr; stdout is promtool's path, if any.
set -uo pipefail

if command -v promtool >/dev/null; then command -v promtool; exit 0; fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's prometheus package (for promtool)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends prometheus >&2; then
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends prometheus >&2
  fi
fi

if command -v promtool >/dev/null; then command -v promtool; exit 0; fi
echo "warning: promtool is not available; the promtool alert-rule tests will be skipped" >&2
exit 0
