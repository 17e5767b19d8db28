"""osr-serve on a port another process holds: one line and exit 2, before claiming to serve."""

import socket
import subprocess
import sys


def test_busy_port_fails_before_saying_serving():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "osr.serve.server", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "serving" not in proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
