#!/usr/bin/env bash
# Reproduces results/inspect-default: a small real run of the default model on this folder's own prompts, its
# `spi inspect` page and a screenshot of it in headless Chromium. About 6 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/spi run results/inspect-default/config.yaml
.venv/bin/spi inspect runs/inspect-default --method spi-1 --out results/inspect-default/inspect.html
shot() {  # $1: the PNG, $2: the page's fragment (#p=N opens prompt N's tree), $3: the window height
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,"$3" \
    --screenshot="results/inspect-default/$1" "file://$PWD/results/inspect-default/inspect.html$2"
}
shot inspect.png "" 1100
shot inspect-tree.png "#p=2" 2400
cp runs/inspect-default/report.md runs/inspect-default/results.json results/inspect-default/
