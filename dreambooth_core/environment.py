"""Which Python trains, and what it still needs: the plan that `install.py` carries out.

A host's own environment belongs to the host. AUTOMATIC1111 pins old transformers,
accelerate, safetensors, gradio, numpy and Pillow, and reinstalls any pin that changed
on every start; its torch is a CUDA/ROCm build the user chose. So training runs in a
*worker environment*: a venv made with `--system-site-packages` over the host's Python
(plus a `.pth` bridge when the host's Python is itself a venv, whose packages
`--system-site-packages` would not see), so the host's torch is reused and only modern
diffusers/transformers/peft/accelerate go into the worker. Where there is no such split
(ComfyUI-Manager installs into the host's env; a Python the user configured), only what is
missing is installed, torch and its binary companions are never touched, and nothing the
host pins is changed.

Whatever is installed comes from the *tested set* (`constraints.txt` beside this module:
the exact versions the suite passed with) wherever the Python and torch are new enough for
it; elsewhere the open ranges of `WORKER_REQUIREMENTS` apply, and the plan says so. Before a
run loads anything, `check_runtime` stops it with the package, the version found, the range
needed and the command that fixes it.

Planning is separate from doing: `plan_*` only reads (probing a Python is a subprocess
that imports nothing but the standard library), `run_plan` is the one function that
changes anything. Imports here are stdlib plus `packaging` (which every host with
transformers has), so `install.py` can use this module inside any host.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, Union

from .errors import UserError

# The trainer's runtime requirements, the supported ranges: pyproject.toml's [project]
# dependencies (tests keep the two in step; the comment there says why each bound is).
# torch is checked like the rest but never installed: it is the host's.
WORKER_REQUIREMENTS: tuple[str, ...] = (
    "torch>=2.1",
    "diffusers>=0.30",
    "transformers>=4.44",
    "peft>=0.13",
    "accelerate>=0.33",
    "psutil>=5.9",
    "safetensors>=0.4.2",
    "numpy>=1.24",
    "pillow>=9.5",
    "tqdm>=4.60",
    "pyyaml>=6",
    "tomli>=2; python_version < '3.11'",
)
# Binary packages built against the host's torch (or that torch is built against):
# never installed, upgraded or replaced by us, in any environment.
HOST_OWNED: tuple[str, ...] = ("torch", "torchvision", "torchaudio", "xformers", "triton", "numpy")
# A1111 v1.10's requirements_versions.txt pins, for when the host's own file cannot be read.
A1111_PINS: dict[str, str] = {"transformers": "4.30.2", "accelerate": "0.21.0", "safetensors": "0.4.2",
                              "gradio": "3.41.2", "numpy": "1.26.2", "pillow": "9.5.0"}
# What must import in the worker for a run to start (import name per distribution).
VERIFY_IMPORTS: tuple[str, ...] = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors")

TESTED_SET_FILE = Path(__file__).with_name("constraints.txt")
FIX_HINT_ENV = "DREAMBOOTH_CORE_FIX_HINT"   # set by a host for its own fix (A1111: run install.py)

VENV_DIRNAME = "worker-venv"
STAMP_NAME = "dreambooth-core-env.json"
BRIDGE_PTH = "dreambooth_core_host.pth"

# Runs in the Python being probed (any version >= 3.8): the standard library only.
PROBE_CODE = r"""
import importlib.metadata as md, json, os, platform, re, site, sys
versions = {}
for dist in md.distributions():
    name = dist.metadata["Name"]
    if name:
        versions.setdefault(re.sub(r"[-_.]+", "-", name).lower(), dist.version)
try:
    sites = site.getsitepackages()
except AttributeError:
    sites = []
markers = {"python_version": ".".join(platform.python_version_tuple()[:2]),
           "python_full_version": platform.python_version(), "os_name": os.name, "sys_platform": sys.platform,
           "platform_system": platform.system(), "platform_machine": platform.machine(),
           "platform_release": platform.release(), "platform_version": platform.version(),
           "platform_python_implementation": platform.python_implementation(),
           "implementation_name": sys.implementation.name, "implementation_version": platform.python_version()}
print(json.dumps({"executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
                  "site_packages": [p for p in sites if os.path.isdir(p)], "versions": versions, "markers": markers}))
"""


def canonical(name: str) -> str:
    """PEP 503 name: what `Pillow`, `pillow` and `PyYAML`/`pyyaml` compare as."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class PythonEnv:
    """What a probe of one Python reported: where it lives and which distributions it sees."""

    executable: str
    prefix: str
    base_prefix: str
    site_packages: list[str]
    versions: dict[str, str]
    markers: dict[str, str]

    @property
    def is_venv(self) -> bool:
        return os.path.realpath(self.prefix) != os.path.realpath(self.base_prefix)

    def same_env(self, other: "PythonEnv") -> bool:
        return os.path.realpath(self.prefix) == os.path.realpath(other.prefix)

    def owned_versions(self) -> dict[str, str]:
        return {name: self.versions[name] for name in HOST_OWNED if name in self.versions}


def probe(python: str | os.PathLike | None = None) -> PythonEnv:
    """Probe `python` (None: this interpreter, in-process) without importing any of its packages."""
    if python is None:
        namespace: dict = {}
        output = _capture_print(lambda: exec(PROBE_CODE, namespace))
    else:
        try:
            done = subprocess.run([str(python), "-I", "-c", PROBE_CODE], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(f"the Python at {python} cannot be run ({exc}): check the path, or clear it to use the worker venv") from None
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"the Python at {python} is broken ({tail}): recreate it, or clear the setting to use the worker venv")
        output = done.stdout
    return PythonEnv(**json.loads(output.strip().splitlines()[-1]))


def _capture_print(fn: Callable[[], None]) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn()
    return buf.getvalue()


def read_pins(path: str | os.PathLike) -> dict[str, str]:
    """`name==version` lines of a requirements file, by canonical name ({} if it is absent)."""
    p = Path(path)
    if not p.is_file():
        return {}
    pins = {}
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def _requirement(text: str):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - every host with transformers has packaging
        raise UserError("the 'packaging' module is needed to check requirements: pip install packaging") from None
    return Requirement(text)


def unmet(requirements: Iterable[str], env: PythonEnv) -> list[str]:
    """The requirements `env` does not satisfy (absent, or a version outside the range)."""
    from packaging.version import InvalidVersion, Version

    out = []
    for text in requirements:
        req = _requirement(text)
        if req.marker is not None and not req.marker.evaluate(env.markers):
            continue
        have = env.versions.get(canonical(req.name))
        try:
            ok = have is not None and req.specifier.contains(Version(have), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            out.append(text)
    return out


def requirement_name(text: str) -> str:
    return canonical(_requirement(text).name)


# ---- the tested set -----------------------------------------------------------------------

@dataclass(frozen=True)
class TestedSet:
    """The exact versions the suite passed with, and the Python and torch they need."""

    pins: dict[str, str]                 # canonical name -> version
    applies_to: tuple[str, ...] = ()     # requirements such as "python>=3.11", "torch>=2.6"

    __test__ = False  # not a pytest class

    def why_not(self, env: PythonEnv) -> str | None:
        """None when `env`'s Python and torch are what these versions need, else why not."""
        from packaging.version import InvalidVersion, Version

        have = {"python": env.markers.get("python_full_version", ""), "torch": env.versions.get("torch", "")}
        for text in self.applies_to:
            req = _requirement(text)
            found = have.get(req.name, "").split("+")[0]
            try:
                ok = bool(found) and req.specifier.contains(Version(found), prereleases=True)
            except InvalidVersion:
                ok = False
            if not ok:
                return f"{req.name} {found or 'absent'} is older than the tested set needs ({text})"
        return None

    def constraints(self, leave_out: Iterable[str] = ()) -> str:
        """A pip constraints file of the pins, without `leave_out` (names pip must not move)."""
        skip = {canonical(n) for n in leave_out}
        return "".join(f"{name}=={version}\n" for name, version in sorted(self.pins.items()) if name not in skip)


def read_tested_set(path: str | os.PathLike = TESTED_SET_FILE) -> TestedSet:
    """The tested set recorded by tools/freeze_tested_set.py (empty if the file is absent)."""
    p = Path(path)
    if not p.is_file():
        return TestedSet({})
    applies: tuple[str, ...] = ()
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.startswith("# applies-to:"):
            applies = tuple(line.split(":", 1)[1].split())
    return TestedSet(read_pins(p), applies)


# ---- plans -------------------------------------------------------------------------------

@dataclass
class Command:
    argv: list[str]
    what: str


@dataclass
class WriteFile:
    path: Path
    text: str
    what: str


Step = Union[Command, WriteFile]


@dataclass
class Plan:
    """What would make `python` ready to train; empty `steps` and `refused` mean it is ready."""

    python: str                      # the Python that will train
    target: str                      # a sentence: which environment that is
    missing: list[str]               # requirements not met there now
    steps: list[Step] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)   # what we will not change, and why
    notes: list[str] = field(default_factory=list)     # what the user should know (an untested set)
    verify: Command | None = None    # run after the steps: the trainer's libraries import
    stamp: Path | None = None        # written when the steps and the check succeeded
    stamp_data: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return not self.steps and not self.refused

    def describe(self) -> list[str]:
        lines = [f"training Python: {self.python} ({self.target})"]
        lines.append("missing: " + (", ".join(self.missing) if self.missing else "nothing"))
        lines += [f"will not change: {r}" for r in self.refused]
        lines += [f"note: {n}" for n in self.notes]
        for step in self.steps:
            if isinstance(step, Command):
                lines.append(f"would run: {shlex.join(step.argv)}")
            else:
                lines.append(f"would write: {step.path}")
        return lines


def venv_python(venv_dir: str | os.PathLike) -> Path:
    venv = Path(venv_dir)
    return venv / "Scripts" / "python.exe" if os.name == "nt" else venv / "bin" / "python"


def default_worker_python(ext_root: str | os.PathLike) -> Path:
    """The worker venv's Python that `install.py` makes for an extension installed at `ext_root`."""
    return venv_python(Path(ext_root) / VENV_DIRNAME)


def _pip_install(python: str, packages: Sequence[str], keep: Mapping[str, str], constraints: Path | None) -> Command:
    # The host-owned packages are named with their installed versions: pip then leaves
    # them exactly as they are, and fails clearly rather than replace them.
    pinned = [f"{name}=={version}" for name, version in sorted(keep.items())]
    tested = ["-c", str(constraints)] if constraints is not None else []
    return Command([python, "-m", "pip", "install", "--prefer-binary", *tested, *packages, *pinned],
                   f"install {', '.join(requirement_name(p) for p in packages)}"
                   + (" (tested versions)" if constraints is not None else " (untested: newest in range)"))


def _tested_constraints(plan: "Plan", judged: PythonEnv, leave_out: Iterable[str], path: Path,
                        tested: TestedSet) -> Path | None:
    """Add the step that writes the tested set (less `leave_out`) to `path` and return `path`
    when `judged` (the Python and torch that will train) can take it; else note in `plan`
    why the open ranges apply instead, and return None."""
    why = tested.why_not(judged) if tested.pins else "no tested set was found"
    if why is not None:
        plan.notes.append(f"{why}: installing the newest versions in range instead (untested)")
        return None
    plan.steps.append(WriteFile(path, tested.constraints(leave_out), "write the tested set as pip constraints"))
    return path


def _verify(python: str) -> Command:
    return Command([python, "-c", f"import {', '.join(VERIFY_IMPORTS)}"], "check that the trainer's libraries import")


def bridge_text(host: PythonEnv) -> str:
    """The worker venv's `.pth`: the host venv's site-packages after the worker's own, so the
    worker's modern packages win and everything else (torch above all) comes from the host."""
    lines = [f"import site; site.addsitedir({p!r})" for p in host.site_packages] if host.is_venv else []
    return "\n".join(lines) + ("\n" if lines else "")


def stamp_data(host: PythonEnv, requirements: Sequence[str], tested: TestedSet | None = None) -> dict:
    """What a prepared worker venv was made for: a change in any of it prepares it again."""
    tested = read_tested_set() if tested is None else tested
    return {"host_python": host.executable, "host_owned": host.owned_versions(), "requirements": list(requirements),
            "tested_set": tested.pins}


def stamp_matches(stamp: Path, expected: dict) -> bool:
    try:
        return json.loads(stamp.read_text(encoding="utf-8")) == expected
    except (OSError, ValueError):
        return False


def plan_worker_venv(
    venv_dir: str | os.PathLike,
    host: PythonEnv,
    worker: PythonEnv | None = None,
    requirements: Sequence[str] = WORKER_REQUIREMENTS,
    tested: TestedSet | None = None,
) -> Plan:
    """Make (if needed) and fill a venv over the host's Python; pip runs only in that venv,
    with the tested set as constraints when the host's Python and torch can take it.

    `worker` is the probe of the existing venv; without one, the new venv will see exactly
    the host's packages, so what is missing is judged against `host`.
    """
    tested = read_tested_set() if tested is None else tested
    venv = Path(venv_dir)
    python = str(venv_python(venv))
    seen = worker or host
    missing = unmet(requirements, seen)
    plan = Plan(python=python, target=f"worker venv over {host.executable}", missing=missing,
                stamp=venv / STAMP_NAME, stamp_data=stamp_data(host, requirements, tested))
    installable, plan.refused = _split(missing, host.owned_versions(), {}, "")
    if plan.refused:
        return plan
    if worker is None:
        plan.steps.append(Command([host.executable, "-m", "venv", "--system-site-packages", str(venv)],
                                  "create the worker venv"))
    bridge = bridge_text(host)
    if bridge and (worker is None or not _has_bridge(worker, bridge)):
        plan.steps.append(WriteFile(_site_dir(venv, host), bridge, "let the worker see the host's packages (torch)"))
    if installable:
        # Inside its own venv the worker may move anything but what is built against torch.
        constraints = _tested_constraints(plan, host, HOST_OWNED, venv / "tested-constraints.txt", tested)
        plan.steps.append(_pip_install(python, installable, host.owned_versions(), constraints))
    if plan.steps:
        plan.verify = _verify(python)
    return plan


def plan_in_place(
    env: PythonEnv,
    protected: Mapping[str, str],
    requirements: Sequence[str] = WORKER_REQUIREMENTS,
    target: str = "this environment",
    tested: TestedSet | None = None,
    workdir: str | os.PathLike | None = None,
) -> Plan:
    """Install only what is missing into `env` itself — all of it or, when something would
    need torch or a `protected` pin changed, nothing. The install names every host-owned and
    protected package that is present at its installed version, so pip's resolver cannot
    move them either; what is new comes at its tested version, and nothing already
    installed is moved to one. The constraints file is written into `workdir`."""
    tested = read_tested_set() if tested is None else tested
    missing = unmet(requirements, env)
    plan = Plan(python=env.executable, target=target, missing=missing)
    installable, plan.refused = _split(missing, env.owned_versions(), protected, "pinned by the host")
    if installable and not plan.refused:
        keep = {**{name: env.versions[name] for name in protected if name in env.versions}, **env.owned_versions()}
        moving = {requirement_name(r) for r in installable}
        settled = [name for name in env.versions if name not in moving]
        path = Path(workdir or tempfile.gettempdir()) / "dreambooth-core-constraints.txt"
        constraints = _tested_constraints(plan, env, [*HOST_OWNED, *protected, *settled], path, tested)
        plan.steps.append(_pip_install(env.executable, installable, keep, constraints))
        plan.verify = _verify(env.executable)
    return plan


def _split(missing: Sequence[str], owned: Mapping[str, str], protected: Mapping[str, str], why: str) -> tuple[list[str], list[str]]:
    """(what may be installed, why the rest may not): host-owned and protected names are never touched."""
    installable, refused = [], []
    for req in missing:
        name = requirement_name(req)
        if name in HOST_OWNED:
            have = owned.get(name)
            refused.append(f"{req} is needed but {name} is {'not installed' if have is None else have} "
                           f"and belongs to the host: install a matching {name} yourself")
        elif name in protected:
            refused.append(f"{req} is needed but {name}=={protected[name]} is {why}")
        else:
            installable.append(req)
    return installable, refused


def _site_dir(venv: Path, host: PythonEnv) -> Path:
    if os.name == "nt":
        return venv / "Lib" / "site-packages" / BRIDGE_PTH
    version = host.markers.get("python_version", f"{sys.version_info[0]}.{sys.version_info[1]}")
    return venv / "lib" / f"python{version}" / "site-packages" / BRIDGE_PTH


def _has_bridge(worker: PythonEnv, text: str) -> bool:
    """The worker's bridge names exactly this host's packages (a WebUI venv that was recreated
    or another WebUI using the same extension needs it rewritten)."""
    for folder in worker.site_packages:
        path = Path(folder) / BRIDGE_PTH
        if path.is_file():
            return path.read_text(encoding="utf-8") == text
    return False


# ---- doing ---------------------------------------------------------------------------------

Runner = Callable[[list[str]], int]


def run_command(argv: list[str]) -> int:
    return subprocess.run(argv).returncode


def run_plan(plan: Plan, runner: Runner | None = None, say: Callable[[str], None] = print) -> bool:
    """Carry out `plan` (commands through `runner`, default `run_command`); True when the
    Python is ready. Stops at the first failing step."""
    runner = runner or run_command
    if plan.refused:
        for line in plan.refused:
            say(f"dreambooth_core: will not change the host's packages: {line}")
    for step in plan.steps:
        say(f"dreambooth_core: {step.what}")
        if isinstance(step, WriteFile):
            step.path.parent.mkdir(parents=True, exist_ok=True)
            step.path.write_text(step.text, encoding="utf-8")
        elif runner(step.argv) != 0:
            say(f"dreambooth_core: failed: {shlex.join(step.argv)}")
            return False
    if plan.verify is not None:
        if runner(plan.verify.argv) != 0:
            say(f"dreambooth_core: the training environment at {plan.python} cannot import its libraries; "
                "see the error above (a torch too old for these versions is the usual cause)")
            return False
    if plan.refused:
        return False
    if plan.stamp is not None:
        plan.stamp.parent.mkdir(parents=True, exist_ok=True)
        plan.stamp.write_text(json.dumps(plan.stamp_data, indent=1, sort_keys=True), encoding="utf-8")
    return True


# ---- at the door of a run ------------------------------------------------------------------

def check_runtime(env: PythonEnv | None = None, requirements: Sequence[str] = WORKER_REQUIREMENTS,
                  tested: TestedSet | None = None) -> None:
    """Stop a run before it loads anything when this Python's packages are outside the
    supported ranges: the package, the version found, the range needed, and one command
    that fixes it (the host may name its own through DREAMBOOTH_CORE_FIX_HINT)."""
    env = probe() if env is None else env
    bad = unmet(requirements, env)
    if not bad:
        return
    tested = read_tested_set() if tested is None else tested
    found = []
    for req in bad:
        name = requirement_name(req)
        have = env.versions.get(name)
        found.append(f"{name} {have} is installed but {req} is needed" if have else f"{name} is missing ({req} is needed)")
    owned = [requirement_name(r) for r in bad if requirement_name(r) in HOST_OWNED]
    if owned:
        fix = (f"{', '.join(owned)} belong{'s' if len(owned) == 1 else ''} to the host: update "
               f"{'it' if len(owned) == 1 else 'them'} there, or train in a worker environment with a newer torch")
    else:
        fix = os.environ.get(FIX_HINT_ENV) or f"fix: {shlex.join(_fix_command(env, bad, tested))}"
    raise UserError(f"this Python ({env.executable}) cannot train: {'; '.join(found)}. {fix}")


def _fix_command(env: PythonEnv, bad: Sequence[str], tested: TestedSet) -> list[str]:
    """pip install of the tested versions of what is wrong (the ranges when the set does not apply)."""
    applies = tested.pins and tested.why_not(env) is None
    wanted = []
    for req in bad:
        name = requirement_name(req)
        wanted.append(f"{name}=={tested.pins[name]}" if applies and name in tested.pins else req)
    return [env.executable, "-m", "pip", "install", *wanted]
