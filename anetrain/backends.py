"""Backends: where MIL programs compile and run.

    b = anetrain.backends.new_backend("ref")          # the CPU reference executor, everywhere
    b = anetrain.backends.new_backend("ane")          # the Apple Neural Engine (macOS; else BackendError)
    b = anetrain.backends.new_backend("auto")         # the ANE with ref for what it cannot run, else ref

A Backend wraps the native backend object (what anetrain._native.Trainer takes) with its compile
counter and budget. The fallback of "auto" is native (FallbackBackend): each kernel says where it
runs and why (Kernel.placement_note).
"""
from . import _native, ane

_PRECISIONS = {"fp16": True, "fp32": False}
_singletons = {}


class Backend:
    """A compiler + executor of MIL programs, with a compile counter and an optional budget."""

    def __init__(self, native):
        self._native = native

    @property
    def name(self):
        return self._native.name

    @property
    def compiles(self):
        return self._native.compiles

    @property
    def budget(self):
        """Compiles allowed in this process (None: unlimited)."""
        b = self._native.budget
        return None if b < 0 else b

    @budget.setter
    def budget(self, value):
        self._native.budget = -1 if value is None else int(value)

    @property
    def remaining(self):
        """Compiles left before CompileBudgetExceeded (None: unlimited)."""
        r = self._native.remaining
        return None if r < 0 else r

    def supports(self, op):
        return self._native.supports(op)

    @property
    def native(self):
        """The native backend object (what anetrain._native.Trainer takes)."""
        return self._native

    def __repr__(self):
        return f"<anetrain Backend {self.name}: {self.compiles} compiles, budget {self.budget}>"


def _make_native(name, compile_budget, precision, qos, multi_input):
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be 'fp16' or 'fp32', got {precision!r}")
    if name == "ref":
        budget = -1 if compile_budget is None else int(compile_budget)
        return _native.make_ref_backend(compile_budget=budget, fp16_rounding=_PRECISIONS[precision])
    if name == "ane":  # unset options come from the environment (anetrain.ane); BackendError off macOS
        return _native.make_ane_backend(compile_budget=compile_budget, qos=qos, multi_input=multi_input)
    raise ValueError(f"unknown backend {name!r}; use 'ref', 'ane' or 'auto'")


def new_backend(name="ref", compile_budget=None, precision="fp16", strict=None, qos=None, multi_input=None):
    """A fresh backend with its own compile counter. precision='fp32' (ref only) skips fp16 rounding;
    qos and multi_input are the ANE's settings (unset: from the environment, see anetrain.ane).

    "auto" is the ANE where it is available, with the ref backend taking any program the ANE
    cannot run (each such kernel's placement_note says why; strict=True or ANETRAIN_STRICT=1
    makes that an error), and the ref backend elsewhere (ANETRAIN_BACKEND overrides)."""
    fallback = name == "auto"
    if name == "auto":
        name = ane.resolve_backend_name("auto")
    if precision != "fp16" and name != "ref":
        raise ValueError(f"precision={precision!r} is only available on the ref backend")
    if (qos is not None or multi_input is not None) and name != "ane":
        raise ValueError("qos and multi_input are settings of the ane backend")
    native = _make_native(name, compile_budget, precision, qos, multi_input)
    if fallback and name == "ane":
        native = _native.make_fallback_backend(native, _native.make_ref_backend(), ane.strict_mode(strict))
    return Backend(native)


def get_backend(name="ref"):
    """The process-wide backend of that name (created on first use; "auto" as new_backend says)."""
    key = f"auto:{ane.resolve_backend_name('auto')}" if name == "auto" else name  # ANETRAIN_BACKEND may change
    if key not in _singletons:
        _singletons[key] = new_backend(name)
    return _singletons[key]


