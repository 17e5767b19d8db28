"""osr-serve against its own OpenAPI schema: schemathesis with every check (`--checks all`).

    .venv/bin/python bench/openapi_fuzz.py [--max-examples N] [--model cifar10-ad]

Starts osr-serve in-process on a free 127.0.0.1 port with the bundled model and runs
`schemathesis --config-file bench/schemathesis.toml run URL/openapi.json --checks all` with its
default phases (examples, coverage, fuzzing, stateful) and a fixed seed; prints schemathesis'
summary and exits with its status. tests/test_service_openapi.py runs the same with fewer
examples per operation.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from demo_screenshot import serving  # noqa: E402  (bench/ is not a package)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="cifar10-ad")
    parser.add_argument("--max-examples", type=int, default=None, help="per operation (default: schemathesis')")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    from osr.serve.app import create_app
    from osr.serve.settings import Settings

    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    app = create_app(Settings(model_repository=args.model_repository, model=args.model))
    with serving(app) as url, tempfile.TemporaryDirectory() as scratch:  # schemathesis' cache goes there
        command = [schemathesis, "--config-file", str(ROOT / "bench" / "schemathesis.toml"), "--no-color", "run",
                   f"{url}/openapi.json", "--checks", "all", "--seed", str(args.seed), "--workers", "1",
                   "--generation-database", "none"]
        if args.max_examples:
            command += ["--max-examples", str(args.max_examples)]
        proc = subprocess.run(command, cwd=scratch, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    start = output.find("=== SUMMARY")
    print(output[output.rfind("\n", 0, start) + 1:] if start >= 0 else output[-4000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
