"""The node contract: what a V1 node class declares about its inputs, read one way for the pack.

ComfyUI's V1 contract is a plain class with ``INPUT_TYPES()`` (``required``, ``optional`` and
``hidden`` sections of ``name: (type, options)``), ``RETURN_TYPES``, ``RETURN_NAMES``,
``FUNCTION``, ``CATEGORY``. :func:`input_specs` reads the declared inputs into
:class:`InputSpec` records, including what ComfyUI's web frontend derives from them (which
inputs are widgets, which get a ``control_after_generate`` widget, a widget's starting value).
The finite-FLOAT guard, the workflow formats and the headless runner all read inputs here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

SEED_NAMES = ("seed", "noise_seed")
_WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


@dataclass(frozen=True)
class InputSpec:
    """One entry of a node's ``INPUT_TYPES()`` (required or optional section)."""

    name: str
    type: Any  # a type string, or the list of choices of a combo
    options: dict
    required: bool

    @property
    def choices(self) -> Optional[list]:
        """The allowed values of a combo input, else ``None``."""
        if isinstance(self.type, (list, tuple)):
            return list(self.type)
        if self.type == "COMBO":
            return list(self.options.get("options", []))
        return None

    @property
    def type_name(self) -> str:
        return "COMBO" if self.choices is not None else str(self.type)

    @property
    def is_widget(self) -> bool:
        """Whether the editor shows this input as a widget (a value in ``widgets_values``)."""
        if self.options.get("forceInput"):
            return False
        return self.choices is not None or self.type in _WIDGET_TYPES

    @property
    def has_control(self) -> bool:
        """Whether the editor adds a ``control_after_generate`` widget right after this one.

        The frontend's rule (ComfyUI_frontend 1.27, ``useIntWidget`` / ``useComboWidget``):
        an INT widget gets one when its ``control_after_generate`` option is truthy, or,
        when the option is absent, when it is named ``seed`` or ``noise_seed``; a COMBO
        only when the option is truthy; other widgets never. An explicit
        ``control_after_generate: False`` on a seed means no control widget.
        """
        if not self.is_widget:
            return False
        flag = self.options.get("control_after_generate")
        if self.type == "INT":
            return bool(flag) if flag is not None else self.name in SEED_NAMES
        return self.choices is not None and bool(flag)

    def default(self) -> Any:
        """The value the editor starts a widget with."""
        if "default" in self.options:
            return self.options["default"]
        if self.choices is not None:
            return self.choices[0] if self.choices else ""
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(self.type)


def input_specs(cls: type) -> list[InputSpec]:
    """The inputs of a node class, required then optional, in declaration order."""
    sections = cls.INPUT_TYPES()
    specs = []
    for section in ("required", "optional"):
        for name, spec in (sections.get(section) or {}).items():
            spec = tuple(spec)
            specs.append(InputSpec(name, spec[0], dict(spec[1]) if len(spec) > 1 else {}, section == "required"))
    return specs
