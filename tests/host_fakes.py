"""Our fake host modules, served under the host's import names.

The adapters import host modules by name (`comfy.utils`, `modules.shared`, `gradio`, ...).
The fakes are our own flat files (`fake_comfy_utils.py`, ...); a table maps each host
name to one of them, or to None for a package with nothing of its own. Installing the
finder first on `sys.meta_path` makes those names resolve to the fakes for the duration of
a test, and removing it purges every module it served.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path


class _EmptyPackage(importlib.abc.Loader):
    """Loader of a host package the fakes give no content (only submodules)."""

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        pass


class FakeHostModules(importlib.abc.MetaPathFinder):
    """Resolves the host names in `table` to files in `folder`; any other name is left to
    the next finder. `extra` names (e.g. the adapter package the host loads) are purged too."""

    def __init__(self, folder: Path, table: Mapping[str, str | None], extra: tuple[str, ...] = ()):
        self.folder, self.table = Path(folder), dict(table)
        self.roots = tuple({name.split(".")[0] for name in self.table}) + extra

    def _is_package(self, name: str) -> bool:
        return any(other.startswith(name + ".") for other in self.table)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.table:
            return None
        file = self.table[fullname]
        if file is None:
            return importlib.machinery.ModuleSpec(fullname, _EmptyPackage(), is_package=True)
        return importlib.util.spec_from_file_location(
            fullname, self.folder / file, submodule_search_locations=[] if self._is_package(fullname) else None)

    def purge(self) -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in self.roots:
                del sys.modules[name]

    def install(self) -> None:
        self.purge()
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.purge()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        self.install()
        try:
            yield
        finally:
            self.remove()
