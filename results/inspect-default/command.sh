#!/usr/bin/env bash
# Reproduces results/inspect-default: a small real run of the default model on this folder's own prompts, its
# `spi inspect` page and a screenshot of it in headless Chromium. About 6 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/spi run results/inspect-default/config.yaml
.venv/bin/spi inspect runs/inspect-default --method spi-1 --out results/inspect-default/inspect.html
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1600 \
  --screenshot=results/inspect-default/inspect.png "file://$PWD/results/inspect-default/inspect.html"
cp runs/inspect-default/report.md runs/inspect-default/results.json results/inspect-default/
