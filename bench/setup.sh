#!/bin/sh
# The bench's own environments (gitignored), never the project's dependencies:
#   bench/.venv-fastmcp  FastMCP 4.2.3, the proxy the gateway is compared with
#   bench/.venv-plot     matplotlib for bench/scale.png, py-spy for the profile
set -e
cd "$(dirname "$0")"
[ -x .venv-fastmcp/bin/python ] || python3 -m venv .venv-fastmcp
.venv-fastmcp/bin/pip install -q 'fastmcp==4.2.3'
[ -x .venv-plot/bin/python ] || python3 -m venv .venv-plot
.venv-plot/bin/pip install -q matplotlib py-spy
