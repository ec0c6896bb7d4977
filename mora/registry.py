"""Names to classes for the families a config picks a member of by name (`method: lora`, `data.builder.task:
uuid`). Each member registers itself next to its class (`@METHODS.register("lora")`), so nothing outside
its module needs to know it exists; the family's one builder (`mora.adapters.build_method`,
`mora.data.build_task`, both `_target_`s in mora.builders.BUILDERS) looks the name up here. A lookup
first imports every module of the family's package, so a member is found however little has been
imported yet.
"""

from __future__ import annotations

import importlib
import pkgutil


class Registry:
    def __init__(self, what: str, package: str, attribute: str):
        """`what` names a member in errors ("method"); `package` holds the members' modules; each
        registered class gets its name as `attribute`."""
        self.what, self.package, self.attribute = what, package, attribute
        self._classes: dict[str, type] = {}
        self._found = False

    def register(self, name: str):
        """Class decorator: make the class reachable by `name`."""

        def wrap(cls: type) -> type:
            if name in self._classes:
                raise RuntimeError(f"{self.what} {name!r} registered twice")
            setattr(cls, self.attribute, name)
            self._classes[name] = cls
            return cls

        return wrap

    def _discover(self) -> None:
        if not self._found:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
            self._found = True

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._classes)

    def get(self, name: str) -> type:
        self._discover()
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.what} {name!r}; choose one of {self.names()}") from None
