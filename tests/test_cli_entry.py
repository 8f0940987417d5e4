"""How the command line is reached: `python -m lutllm` is the `lutllm` script (for environments
without the script on PATH), with the same options and errors."""
import subprocess
import sys

import lutllm


def test_python_dash_m_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "lutllm", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"lutllm, version {lutllm.__version__}"
    r = subprocess.run([sys.executable, "-m", "lutllm", "run", "--threads", "0", "hi"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "--threads" in r.stderr
