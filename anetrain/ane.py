"""The Apple Neural Engine backend seen from Python.

Availability, the chip and the MIL dialect chosen for it, the ANE settings, which backend a
name resolves to, and the compile-with-fallback rule. The native side (anetrain._native) holds
the logic; this module gives it names. Settings come from the environment:

    ANETRAIN_BACKEND=ane|ref|auto       used when a caller asks for "auto"
    ANETRAIN_STRICT=1                    a kernel the ANE cannot compile is an error, not a fallback
    ANETRAIN_MIL_DIALECT=1.3/ios18       MIL dialect override ("<version>/<opset>[-verbose]")
    ANETRAIN_ANE_COMPILE_BUDGET=100      compiles per process (-1 = unlimited)
    ANETRAIN_ANE_QOS=21                  QoS of compile/load/evaluate (0..63)
    ANETRAIN_ANE_MULTI_INPUT=0|1         one IOSurface per MIL input (1) or one packed input (0)
"""
import warnings

from . import _native

__all__ = [
    "FallbackWarning", "available", "unavailable_reason", "chip", "dialect", "dialect_string", "options",
    "strict_mode", "new_backend", "resolve_backend_name", "compile_with_fallback", "release_models",
]


class FallbackWarning(UserWarning):
    """A kernel failed to compile on the ANE and runs on the ref backend instead."""


def available():
    """True when AppleNeuralEngine.framework loads and has the classes the backend uses."""
    return bool(_native.ane_available())


def unavailable_reason():
    """Why the ANE cannot be used here ('' when it can)."""
    return _native.ane_unavailable_reason()


def chip():
    """dict(brand, model, ane_subtype, family); empty strings where unknown (always off macOS)."""
    return dict(_native.ane_chip())


def dialect():
    """The MIL dialect for this machine: dict(version, opset, verbose_scalars, source).

    source is "env" (ANETRAIN_MIL_DIALECT), "detected" (the chip is in the table) or "default".
    """
    return dict(_native.ane_dialect())


def dialect_string():
    """dialect() spelled as the MIL builder and the trainer take it, e.g. "1.0/ios16-verbose"."""
    d = dialect()
    return f"{d['version']}/{d['opset']}{'-verbose' if d['verbose_scalars'] else ''}"


def options():
    """dict(compile_budget, qos, multi_input, strict) as the environment sets them."""
    return dict(_native.ane_options())


def strict_mode(strict=None):
    """`strict` when given, else ANETRAIN_STRICT."""
    return bool(options()["strict"]) if strict is None else bool(strict)


def new_backend(compile_budget=None, qos=None, multi_input=None):
    """A fresh ANE backend (an anetrain.kernels.Backend); unset options come from the environment.
    Raises anetrain.BackendError (saying why) where the ANE is unavailable."""
    from .kernels import Backend

    return Backend(_native.make_ane_backend(compile_budget=compile_budget, qos=qos, multi_input=multi_input))


def resolve_backend_name(name="auto"):
    """'ane' or 'ref' for "auto"/None, "ane" or "ref". An explicit name wins over ANETRAIN_BACKEND,
    which wins over auto (ane when available). ValueError for unknown names or an unusable ANE."""
    return _native.ane_resolve_backend("auto" if name is None else name)


_warned_labels = set()


def compile_with_fallback(compile_on_ane, compile_on_ref, label, strict=None):
    """Return compile_on_ane(); if the ANE compiler fails (BackendError), warn once per kernel
    label (FallbackWarning naming the kernel and the compiler's message) and return
    compile_on_ref() instead, unless strict mode is on. A spent compile budget and MIL errors
    always propagate: they are not the ANE's inability to run one kernel."""
    try:
        return compile_on_ane()
    except _native.BackendError as e:
        if isinstance(e, _native.CompileBudgetExceeded) or strict_mode(strict):
            raise
        if label not in _warned_labels:
            _warned_labels.add(label)
            warnings.warn(_native.ane_fallback_warning(label, str(e)), FallbackWarning, stacklevel=2)
    return compile_on_ref()


def release_models():
    """Remove every ANE model directory this process created and its registry file, and return
    the removed paths. For the exec() restart: the new process image cannot unload the old one's
    programs, and a directory left behind would wait for the next process's sweep."""
    return list(_native.ane_release_models())
