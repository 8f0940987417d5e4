"""Anonymous memory (RssAnon) that binding a model and running one token add, measured in a fresh
process per call so earlier tests' allocations do not hide it. Shared by the zero-copy tests."""
import subprocess
import sys

_PROBE = (
    "import sys\n"
    "def anon():\n"
    "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon:'))\n"
    "import numpy as np\n"
    "from lutllm import _core\n"
    "from lutllm.engine import Engine\n"
    "use_lut = sys.argv[1] == '1'\n"
    "for path in sys.argv[2:]:\n"
    "    e = Engine(path, n_ctx=64, n_threads=2, lut=use_lut)\n"
    "    a = anon()\n"
    "    m = _core.Model(path, dict(e.config.as_dict(), use_lut=use_lut), e.gguf.runtime_descs(), 2)\n"
    "    c = _core.Context(m, 64, 64)\n"
    "    b = anon()\n"
    "    c.eval(np.array([1, 2, 3], dtype=np.int32), 0, False)\n"
    "    print(b - a, anon() - b)\n"
    "    del c, m, e\n"
)


def anon_growth_kb(paths, use_lut: bool) -> list[tuple[int, int]]:
    """Per model file: (KiB added by loading the model and a 64-token context, KiB added by evaluating
    3 tokens). The Engine built first (for the config) is not counted."""
    r = subprocess.run([sys.executable, "-c", _PROBE, "1" if use_lut else "0", *map(str, paths)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()[-len(paths):]
    return [tuple(map(int, line.split())) for line in lines]
