"""The Apple Neural Engine backend seen from Python.

Availability, the chip and the MIL dialect chosen for it, the ANE settings, which backend a
name resolves to, and the compile-with-fallback rule. The native side (anetrain._native) holds
the logic; this module gives it names. Settings come from the environment:

    ANETRAIN_BACKEND=ane|ref|auto       used when a caller asks for "auto"
    ANETRAIN_STRICT=1                    with "auto", a kernel the ANE cannot run is an error, not a fallback
    ANETRAIN_ANE_SHAPED=0|1              the trainer's programs: ANE-shaped (1) or split (0); default:
                                         ANE-shaped on the ANE, split on ref
    ANETRAIN_MIL_DIALECT=1.3/ios18       MIL dialect override ("<version>/<opset>[-verbose]")
    ANETRAIN_ANE_COMPILE_BUDGET=119      compiles per process (-1 = unlimited)
    ANETRAIN_ANE_QOS=21                  QoS of compile/load/evaluate (0..63)
    ANETRAIN_ANE_MULTI_INPUT=0|1         one IOSurface per MIL input (1) or one packed input (0)
"""
import numpy as np

from . import _native
from . import config as _config

__all__ = [
    "available", "unavailable_reason", "chip", "dialect", "dialect_string", "options", "strict_mode",
    "new_backend", "resolve_backend_name", "programs",
]


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


def programs(config, pipeline="dynamic", chip=None, layer_weights=None):
    """Exactly what the ANE backend is handed for every kernel the trainer uses, on any OS.

    config: a preset name ("stories110M"), an anetrain.config.ModelConfig, or a dict of its fields.
    Returns [(name, mil_text, blobs, input_layout, output_layout)]: each program takes one fp16
    [1, C, 1, W] input and returns one [1, C, 1, S] output, and a layout is a list of
    (tensor, channel, column, channels, columns) blocks saying where each tensor lives in them
    (activations [C_i, S]; dynamic weights [out, in] as llama2.c stores them). The static pipeline
    bakes ``layer_weights`` ({"wq": [q_dim, dim], ...} float32; default: seeded random ones, which
    change only the blob bytes). chip: a family ("M1".."M5") or None; every family starts with
    the program(1.3)/ios18 dialect (docs/ane-rules.md).
    """
    c = _model_config(config)
    shape = dict(dim=c.dim, hidden_dim=c.hidden_dim, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                 seq_len=c.seq_len, rope_theta=c.rope_theta)
    if pipeline not in _config.PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose static or dynamic")
    if pipeline == "static" and layer_weights is None:
        layer_weights = _random_layer_weights(c)
    out = []
    for name in _native.model_kernel_names():
        text, blobs, _, _, ins, outs = _native.model_kernel(
            name, shape, pipeline, "fp16", "1.3/ios18", layer_weights if pipeline == "static" else None, False, True)
        out.append((name, text, dict(blobs), list(ins), list(outs)))
    return out


def _model_config(config):
    if isinstance(config, str):
        return _config.model_preset(config)
    if isinstance(config, dict):
        return _config.ModelConfig(**config)
    return config


def _random_layer_weights(c, seed=0):
    rng = np.random.default_rng(seed)
    sizes = dict(wq=(c.q_dim, c.dim), wk=(c.kv_dim, c.dim), wv=(c.kv_dim, c.dim), wo=(c.dim, c.q_dim),
                 w1=(c.hidden_dim, c.dim), w2=(c.dim, c.hidden_dim), w3=(c.hidden_dim, c.dim))
    return {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in sizes.items()}
