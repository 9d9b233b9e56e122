#!/usr/bin/env bash
# Print the path of a CPU venv that runs the A1111 tree SHARED/a1111/VERSION, building it with the shared
# make_venv.sh when no venv for the same inputs exists yet.  The venv lives outside the clone and is reused
# while make_venv.sh and the tree's requirements_versions.txt are unchanged (its folder name is their hash).
#
#   usage: a1111_venv.sh SHARED_A1111_DIR VERSION          (log: stderr; result: the venv path on stdout)
set -euo pipefail
a1111=$1; version=$2
cache=${SSD1B_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sd-webui-ssd1b/a1111-venvs}
key=$(cat "$a1111/make_venv.sh" "$a1111/$version/requirements_versions.txt" | sha256sum | cut -c1-16)
venv=$cache/$version-$key
if [ ! -f "$venv/.complete" ]; then
  echo "building the $version venv (make_venv.sh, a few minutes; reused while its inputs are unchanged): $venv" >&2
  rm -rf "$venv"; mkdir -p "$cache"
  # make_venv.sh writes nothing beside itself; bytecode of the venv's packages stays in the venv
  PYTHONPYCACHEPREFIX= bash "$a1111/make_venv.sh" "$version" "$venv" >&2
  touch "$venv/.complete"
fi
echo "$venv"
