"""One rule for the FLOAT inputs of every node of the pack: finite numbers only.

ComfyUI's ``/prompt`` validation compares a FLOAT with its ``min`` and ``max``; NaN fails
every comparison, so ``NaN`` passes (and so does ``inf`` where there is no bound). A
non-finite knob gives black frames, or an all-NaN entry in a memory bank that poisons every
later run. :func:`guard_float_inputs` is applied to every registered class (root
``__init__``): it wraps the class's ``FUNCTION`` so that a non-finite FLOAT raises a
:class:`~.errors.NodeInputError` before the node does any work or changes any state. The
headless runner (:mod:`..runner.execution`) rejects the same values at validation, with the same
:func:`finite_expectation` wording.

The guard is not a ``VALIDATE_INPUTS``: ComfyUI skips its own type and min/max checks for
inputs named there, which would lose more than it gains.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any, Mapping, Optional

from .errors import NodeInputError
from .contract import input_specs

_GUARDED = "__cvs_float_guard__"


def finite_expectation(options: Mapping) -> str:
    """What a FLOAT input with these ``options`` expects, e.g. ``"a finite number between 1.0 and 20.0"``."""
    low, high = options.get("min"), options.get("max")
    if low is not None and high is not None:
        return f"a finite number between {low} and {high}"
    if low is not None:
        return f"a finite number of at least {low}"
    if high is not None:
        return f"a finite number of at most {high}"
    return "a finite number"


def non_finite(value: Any) -> Optional[float]:
    """The first NaN or infinite number in ``value`` (a number, or a list of them for
    ``INPUT_IS_LIST`` nodes); ``None`` when there is none. Other values are not numbers here."""
    for item in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(item, numbers.Real) and not math.isfinite(item):
            return item
    return None


def check_float_inputs(node: str, cls: type, arguments: Mapping[str, Any]) -> None:
    """Raise a ``NodeInputError`` naming ``node`` for the first FLOAT input of ``cls`` whose
    value in ``arguments`` (input name -> value) is not finite."""
    for spec in input_specs(cls):
        if spec.type == "FLOAT" and spec.name in arguments:
            bad = non_finite(arguments[spec.name])
            if bad is not None:
                raise NodeInputError(node, spec.name, f"is {bad}", finite_expectation(spec.options))


def guard_float_inputs(cls: type, display_name: str) -> type:
    """Wrap ``cls.<FUNCTION>`` (a plain method of a V1 node) in place so it first runs
    :func:`check_float_inputs`; errors name the called class's ``DISPLAY_NAME`` (else
    ``display_name``). Applying it twice, or to a subclass of a guarded class, wraps once."""
    function = getattr(cls, cls.FUNCTION)
    if getattr(function, _GUARDED, False):
        return cls
    signature = inspect.signature(function)
    var_keyword = [p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]

    @functools.wraps(function)
    def guarded(self, *args, **kwargs):
        try:
            arguments = dict(signature.bind(self, *args, **kwargs).arguments)
        except TypeError:  # let the node's own signature report the bad call
            return function(self, *args, **kwargs)
        for name in var_keyword:  # inputs taken as ``**settings``
            arguments.update(arguments.pop(name, {}))
        node_class = type(self)
        check_float_inputs(getattr(node_class, "DISPLAY_NAME", display_name), node_class, arguments)
        return function(self, *args, **kwargs)

    setattr(guarded, _GUARDED, True)
    setattr(cls, cls.FUNCTION, guarded)
    return cls
