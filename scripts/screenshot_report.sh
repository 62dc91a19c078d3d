#!/usr/bin/env bash
# Screenshot a bea report in headless Chromium, to check that the page renders.
#
#   scripts/screenshot_report.sh RUN_DIR [OUT.png]
#
# Builds RUN_DIR/report.html with `bea report` if it is missing, then writes a full-width
# PNG (default RUN_DIR/report.png). Needs chromium (or chromium-browser / google-chrome)
# on PATH; this script does not install it. Exit status 3 when no browser is found.
set -euo pipefail
run_dir="${1:?usage: scripts/screenshot_report.sh RUN_DIR [OUT.png]}"
out="${2:-$run_dir/report.png}"
if [ ! -f "$run_dir/report.html" ]; then
    bea report "$run_dir" >/dev/null
fi
browser=""
for candidate in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$candidate" >/dev/null 2>&1; then
        browser="$candidate"
        break
    fi
done
if [ -z "$browser" ]; then
    echo "screenshot_report: no chromium found on PATH (install it to use this script)" >&2
    exit 3
fi
page="file://$(cd "$(dirname "$run_dir/report.html")" && pwd)/report.html"
"$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1200,4000 --screenshot="$out" "$page" >/dev/null 2>&1
if [ ! -s "$out" ]; then
    echo "screenshot_report: $browser produced no screenshot" >&2
    exit 1
fi
echo "$out"
