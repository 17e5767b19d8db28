#!/usr/bin/env bash
# Create, once, the venv holding a real tritonserver for tests/test_triton_server.py and
# serve/triton_backend/run_local.sh, and print its path (nothing else on success).
#
# The wheel nvidia-pytriton ships tritonserver 2.51 with only the Python backend; the osr
# stand-in onnxruntime backend (serve/triton_backend/onnxruntime/model.py) runs on top of it.
# It pins numpy<2, hence its own venv, apart from the project's.
#
#   OSR_TRITON_VENV  where the venv goes (default ~/.cache/osr/triton-venv)
#   PYTHON           interpreter that creates it (default python3; needs its shared libpython)
set -euo pipefail

venv=${OSR_TRITON_VENV:-$HOME/.cache/osr/triton-venv}
python=${PYTHON:-python3}
requirements=("nvidia-pytriton==0.7.0" "onnxruntime" "numpy<2")

ready() {
  [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as metadata, pathlib, sysconfig
import numpy, onnxruntime  # noqa: F401  (the stub imports both)
assert metadata.version("nvidia-pytriton") == "0.7.0"
assert int(numpy.__version__.split(".")[0]) < 2
site = pathlib.Path(sysconfig.get_paths()["purelib"])
assert (site / "pytriton/tritonserver/bin/tritonserver").is_file()
EOF
}

if ! ready; then
  # stderr: stdout carries only the venv path (make test reads it).
  echo "setup_triton: installing ${requirements[*]} into $venv (once; about 450 MB, a minute or two)" >&2
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  if ! { "$python" -m venv --clear "$venv" && "$venv/bin/pip" install --disable-pip-version-check "${requirements[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup_triton: installing ${requirements[*]} into $venv failed" >&2
    exit 1
  fi
  if ! ready; then
    echo "setup_triton: $venv was installed but does not import numpy<2, onnxruntime and nvidia-pytriton 0.7.0" >&2
    exit 1
  fi
fi
echo "$venv"
