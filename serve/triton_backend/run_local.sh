#!/usr/bin/env bash
# Start the pip-installed tritonserver (wheel nvidia-pytriton, see .ci/setup_triton.sh) on CPU,
# serving an osr model repository with the stand-in onnxruntime backend next to this script.
#
#   serve/triton_backend/run_local.sh MODEL_REPOSITORY [more tritonserver options]
#
# Binds 127.0.0.1 only; ports default to Triton's 8000 (HTTP), 8001 (gRPC), 8002 (metrics) and
# can be changed with --http-port/--grpc-port/--metrics-port. The process becomes tritonserver
# (exec), so stopping this script's pid stops the server.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 MODEL_REPOSITORY [tritonserver options]" >&2
  exit 2
fi
repository=$(cd "$1" && pwd)
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${OSR_TRITON_VENV:-$HOME/.cache/osr/triton-venv}
python=$venv/bin/python
if [ ! -x "$python" ]; then
  echo "no Triton venv at $venv; create it with: bash .ci/setup_triton.sh" >&2
  exit 2
fi

read -r libdir site pyver < <("$python" -c 'import sys, sysconfig
print(sysconfig.get_config_var("LIBDIR"), sysconfig.get_paths()["purelib"], "%d.%d" % sys.version_info[:2])')
dist=$site/pytriton/tritonserver

# Triton finds a Python-based backend as <backend-dir>/<name>/model.py and the Python backend's
# runtime in <backend-dir>/python/, and refuses links that lead outside that directory. So
# assemble it from copies (about 3 MB), one directory per checkout, refreshed on every start.
backends=$venv/osr-backends/$(printf '%s' "$here" | sha1sum | cut -c1-12)
place() {  # place SOURCE DESTINATION: copy atomically, so a server starting beside us never sees half a file
  mkdir -p "$(dirname "$2")"
  cp -p "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"
}
place "$dist/backends/python/libtriton_python.so" "$backends/python/libtriton_python.so"
place "$dist/backends/python/triton_python_backend_utils.py" "$backends/python/triton_python_backend_utils.py"
place "$dist/python_backend_stubs/$pyver/triton_python_backend_stub" "$backends/python/triton_python_backend_stub"
place "$here/onnxruntime/model.py" "$backends/onnxruntime/model.py"

# The server and the stub need libpython and the wheel's bundled libraries. The stub's embedded
# interpreter ignores PYTHONPATH; it finds the venv's packages (numpy<2, onnxruntime) through the
# `python3` it sees first on PATH and that venv's pyvenv.cfg.
export LD_LIBRARY_PATH="$libdir:$site/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$venv/bin:$PATH"
exec "$dist/bin/tritonserver" \
  --model-repository "$repository" \
  --backend-directory "$backends" \
  --model-config-name cpu \
  --disable-auto-complete-config \
  --pinned-memory-pool-byte-size=0 \
  --allow-gpu-metrics=false \
  --http-address 127.0.0.1 \
  --grpc-address 127.0.0.1 \
  --metrics-address 127.0.0.1 \
  "$@"
