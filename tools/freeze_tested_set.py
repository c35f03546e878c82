"""Record the versions the test suite just passed with as the tested set.

    .venv/bin/python tools/freeze_tested_set.py      # after `./dev.sh test` passed

Writes `dreambooth_core/constraints.txt` from that Python's installed distributions:
every one except torch (the host's), the installers and this project itself. `./dev.sh`,
`install.py` and ComfyUI's `requirements.txt` install through that file, so run this only
after the whole suite passed in the Python you name.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "dreambooth_core" / "constraints.txt"
NOT_RECORDED = {"torch", "pip", "setuptools", "wheel", "dreambooth-core"}
# Runs in the named Python: its distributions, and the torch floors they declare.
LIST_CODE = (
    "import importlib.metadata as md, json, platform, re\n"
    "ds = [d for d in md.distributions() if d.metadata['Name']]\n"
    "floors = [m.group(1) for d in ds for r in (d.requires or []) if 'extra ==' not in r\n"
    "          for m in [re.match(r'torch\\s*(?:\\(\\s*)?>=\\s*([0-9.]+)', r)] if m]\n"
    "print(json.dumps({'python': platform.python_version(), 'torch_floors': floors, 'dists': sorted("
    "{re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version for d in ds}.items())}))"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="the Python whose packages passed the suite")
    args = parser.parse_args(argv)
    seen = json.loads(subprocess.run([args.python, "-c", LIST_CODE], capture_output=True, text=True, check=True).stdout)
    dists = dict(seen["dists"])
    torch = dists.get("torch", "?").split("+")[0]
    floor = max(seen["torch_floors"] or ["2.1"], key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))
    lines = [
        "# dreambooth_core's tested set: the exact versions the whole test suite passed with.",
        f"# Recorded by tools/freeze_tested_set.py on Python {seen['python']} ({platform.machine()}) with torch {torch}.",
        "# ./dev.sh, install.py (the A1111 worker venv, ComfyUI-Manager) and requirements.txt install through it.",
        "# torch is the host's and is never installed from here. The line below says which Python and torch",
        "# these versions need (the highest torch floor they declare); where either is older, installs",
        "# resolve within the open ranges of pyproject.toml instead (untested, and said so).",
        f"# applies-to: python>={'.'.join(seen['python'].split('.')[:2])} torch>={floor}",
    ]
    pins = [f"{name}=={version}" for name, version in sorted(dists.items()) if name not in NOT_RECORDED]
    OUT.write_text("\n".join(lines + pins) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)}: {len(pins)} versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
