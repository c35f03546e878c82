"""Prepare the Python that trains; leave the host's own packages exactly as they are.

Run by AUTOMATIC1111 (and Forge) on every start, by ComfyUI-Manager after it clones the
repository, or by hand:

    python install.py            set up whatever is missing (fast when nothing is)
    python install.py --check    report what is missing and what would run; change nothing

- In A1111 (its `launch` module is importable): training runs in `worker-venv/` beside this
  file, a venv over the WebUI's Python that reuses its torch; modern diffusers,
  transformers, peft and accelerate are installed only there. Nothing is installed into
  the WebUI's environment, so none of its pins (requirements_versions.txt) ever changes.
  If Settings → DreamBooth names a worker Python, that one is prepared instead.
- Anywhere else (ComfyUI-Manager, a plain Python): only what is missing is installed into
  this Python; torch is never touched, nor anything the host's requirements file pins.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# not resolved: a clone linked into custom_nodes/ must still see that it is in ComfyUI's folder
HERE = Path(os.path.abspath(__file__)).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from dreambooth_core import environment as env  # noqa: E402  (stdlib + packaging only)
from dreambooth_core.errors import UserError  # noqa: E402

WORKER_PYTHON_SETTING = "dreambooth_core_worker_python"
FAILED_STAMP = ".install-failed.json"   # the plan that failed last, so a start without network does not retry it
# pip's own settings, read from the environment: a short wait and one retry when the index is unreachable
PIP_OFFLINE_FAST = {"PIP_TIMEOUT": "10", "PIP_RETRIES": "1"}


def failed_before(root: Path, plan: env.Plan) -> str:
    """When the same plan failed before: that time, else ''."""
    try:
        data = json.loads((root / FAILED_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(data.get("when", "?")) if data.get("plan") == plan.describe() else ""


def record_outcome(root: Path, plan: env.Plan, ok: bool) -> None:
    stamp = root / FAILED_STAMP
    if ok:
        stamp.unlink(missing_ok=True)
        return
    import datetime

    when = datetime.datetime.now().isoformat(timespec="seconds")
    try:
        stamp.write_text(json.dumps({"plan": plan.describe(), "when": when}, indent=1), encoding="utf-8")
    except OSError:
        pass


def a1111_launch():
    """The WebUI's `launch` module when we run inside A1111/Forge, else None."""
    try:
        import launch  # type: ignore[import-not-found]
    except Exception:
        return None
    return launch if hasattr(launch, "run_pip") and hasattr(launch, "args") else None


def configured_worker_python(launch) -> str:
    """The worker Python set in the WebUI's settings file, or ''."""
    settings_file = getattr(launch.args, "ui_settings_file", None)
    try:
        with open(settings_file, encoding="utf-8") as f:
            return str(json.load(f).get(WORKER_PYTHON_SETTING) or "").strip()
    except (TypeError, OSError, ValueError):
        return ""


def a1111_pins() -> dict[str, str]:
    """The WebUI's own pins, read from its requirements file (a built-in list if unreadable)."""
    try:
        from modules.paths_internal import script_path  # type: ignore[import-not-found]
    except Exception:
        return dict(env.A1111_PINS)
    pins = env.read_pins(Path(script_path) / os.environ.get("REQS_FILE", "requirements_versions.txt"))
    return pins or dict(env.A1111_PINS)


def comfyui_pins(root: Path) -> dict[str, str]:
    """`==` pins of ComfyUI's requirements.txt when installed as `custom_nodes/<this>`."""
    if root.parent.name != "custom_nodes":
        return {}
    return env.read_pins(root.parent.parent / "requirements.txt")


def a1111_plan(launch, check: bool, root: Path) -> env.Plan | None:
    """None when the worker venv is already set up for this host (the every-start fast path)."""
    configured = configured_worker_python(launch)
    if configured:
        host = env.probe()
        worker = env.probe(configured)
        if worker.same_env(host):
            return env.plan_in_place(worker, a1111_pins(), target="the WebUI's own environment (from settings)", workdir=root)
        return env.plan_in_place(worker, {}, target="the Python set in Settings → DreamBooth", workdir=root)
    venv = root / env.VENV_DIRNAME
    host = env.probe()
    stamp = venv / env.STAMP_NAME
    if not check and env.venv_python(venv).is_file() and env.stamp_matches(stamp, env.stamp_data(host, env.WORKER_REQUIREMENTS)):
        return None
    worker = env.probe(env.venv_python(venv)) if env.venv_python(venv).is_file() else None
    return env.plan_worker_venv(venv, host, worker)


def main(argv: list[str] | None = None, root: Path = HERE) -> int:
    """`root` is the extension's folder (the worker venv goes there)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report what is missing and what would run; change nothing")
    parser.add_argument("--retry", action="store_true", help="run again a setup that failed the same way before")
    args = parser.parse_args(argv)
    launch = a1111_launch()
    try:
        if launch is not None:
            plan = a1111_plan(launch, args.check, root)
        else:
            plan = env.plan_in_place(env.probe(), comfyui_pins(root), target="this Python (no WebUI launcher found)",
                                     workdir=root)
    except UserError as exc:
        print(f"dreambooth_core: {exc}")
        return 1
    if plan is None:
        return 0
    if args.check:
        for line in plan.describe():
            print(f"dreambooth_core: {line}")
        return 0 if plan.ready else 1
    when = "" if args.retry else failed_before(root, plan)
    if when:
        print(f"dreambooth_core: setting up the training environment failed at {when} (no network?); not retrying on "
              f"every start: run `python {Path(__file__).name} --retry` in {root} when the network is back")
        return 1
    if not plan.ready:
        print(f"dreambooth_core: preparing the training environment ({plan.target}); this happens once")
    for key, value in PIP_OFFLINE_FAST.items():
        os.environ.setdefault(key, value)
    ok = env.run_plan(plan)
    record_outcome(root, plan, ok)
    if plan.steps or not ok:
        print(f"dreambooth_core: training environment {'ready' if ok else 'NOT ready'}: {plan.python}")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
