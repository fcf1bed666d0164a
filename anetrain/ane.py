"""The Apple Neural Engine backend seen from Python.

Availability, the chip and the MIL dialect chosen for it, the ANE settings, which backend a
name resolves to, the programs the ANE is handed and the rules they obey. The native side (anetrain._native) holds
the logic; this module gives it names. Settings come from the environment:

    ANETRAIN_BACKEND=ane|ref|auto       used when a caller asks for "auto"
    ANETRAIN_STRICT=1                    with "auto", a kernel the ANE cannot run is an error, not a fallback
    ANETRAIN_ANE_SHAPED=0|1              the trainer's programs: ANE-shaped (1) or split (0); default:
                                         ANE-shaped on the ANE, split on ref
    ANETRAIN_MIL_DIALECT=1.3/ios18       MIL dialect override ("<version>/<opset>[-verbose]")
    ANETRAIN_ANE_COMPILE_BUDGET=100      compiles per process (-1 = unlimited)
    ANETRAIN_ANE_QOS=21                  QoS of compile/load/evaluate (0..63)
    ANETRAIN_ANE_MULTI_INPUT=0|1         one IOSurface per MIL input (1) or one packed input (0)
    ANETRAIN_PROBE_RECORD=path           the probe record (default ~/.cache/anetrain/ane_probe.json)

The rule checker (check_program, rules; docs/ane-rules.md) says whether a MIL program has the
shape of the programs known to train on the ANE; the probe record is what scripts/probe.py
found on a Mac (per chip family: multi_io, macos, date), which may relax a rule.
"""
import datetime
import json
import os

import numpy as np

from . import _native
from . import config as _config

__all__ = [
    "available", "unavailable_reason", "chip", "dialect", "dialect_string", "options", "strict_mode",
    "resolve_backend_name", "programs", "release_models",
    "rules", "check_program", "probe_record_path", "probe_record", "record_probe",
    "framework_classes", "describe_class", "class_answers", "shared_event_probe", "process_compiles",
    "kernel_info", "reload_kernel", "overwrite_model_file", "eval_variant", "eval_with_perf_stats",
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
    c = _config.model_config_of(config)
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


def _random_layer_weights(c, seed=0):
    rng = np.random.default_rng(seed)
    sizes = dict(wq=(c.q_dim, c.dim), wk=(c.kv_dim, c.dim), wv=(c.kv_dim, c.dim), wo=(c.dim, c.q_dim),
                 w1=(c.hidden_dim, c.dim), w2=(c.dim, c.hidden_dim), w3=(c.hidden_dim, c.dim))
    return {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in sizes.items()}


# ------------------------------------------------------------------ the ANE rules and the probe record

def probe_record_path():
    """Where the probe record lives: $ANETRAIN_PROBE_RECORD, else ~/.cache/anetrain/ane_probe.json."""
    return os.environ.get("ANETRAIN_PROBE_RECORD") or os.path.join(
        os.path.expanduser("~"), ".cache", "anetrain", "ane_probe.json")


def probe_record():
    """What probes found, per chip family: {family: {"multi_io": bool, "macos": str, "date": str}}.
    {} when nothing was recorded; ValueError naming the file when it is not such a JSON object."""
    path = probe_record_path()
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"probe record {path}: {e}") from e
    if not isinstance(record, dict) or not all(isinstance(v, dict) for v in record.values()):
        raise ValueError(f"probe record {path}: expected {{family: {{fact: value}}}}")
    return record


def record_probe(family, **facts):
    """Merge facts (multi_io=..., macos=...) into the record of one chip family; date defaults to
    today. Written atomically; returns the record's path."""
    if not family:
        raise ValueError("record_probe: the chip family is unknown; nothing is recorded")
    record = probe_record()
    entry = {**record.get(family, {}), **facts}
    entry.setdefault("date", datetime.date.today().isoformat())
    record[family] = entry
    path = probe_record_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _recorded_multi_io(chip):
    """True when the probe record says multi-input requests work on `chip` (None: on every family)."""
    record = probe_record()
    families = [chip] if chip else list(_native.ane_rule_families())
    return all(record.get(f, {}).get("multi_io") is True for f in families)


def rules(chip=None):
    """The ANE rules of a chip family ("M1".."M5"; None = any chip, the strictest):
    dict(family, ops, dialects) with dialects in the order to try them."""
    return dict(_native.ane_rules(chip or ""))


def check_program(mil_text, chip=None, multi_io=None):
    """The ANE rules `mil_text` breaks, one line each ("line N: <rule>: <what>"); [] when it has the
    shape of programs known to train on `chip` (None = any chip). multi_io None: allowed where the
    probe record says multi-input requests work. ValueError for an unknown chip family."""
    if multi_io is None:
        multi_io = _recorded_multi_io(chip)
    return list(_native.ane_check_program(mil_text, chip or "", bool(multi_io)))


def release_models():
    """Remove every ANE model directory this process created and its registry file, and return
    the removed paths. For the exec() restart: the new process image cannot unload the old one's
    programs, and a directory left behind would wait for the next process's sweep."""
    return list(_native.ane_release_models())


# -- The runtime's introspection, for the hardware probes (scripts/probe.py) and the self-test
# (scripts/selftest_ane.py): what the private framework offers, and experiments on one compiled
# kernel (an anetrain.kernels kernel on the ANE backend). The class queries answer "absent" off
# macOS; the kernel experiments exist only in a macOS build.
def framework_classes(prefix="_ANE"):
    """Names of the framework's Objective-C classes starting with ``prefix``."""
    return list(_native.ane_framework_classes(prefix))


def describe_class(name):
    """dict(exists, class_methods, instance_methods, properties) of a framework class."""
    return dict(_native.ane_describe_class(name))


def class_answers(class_name, selector, class_method=False):
    """Whether the class (class_method) or its instances answer ``selector``, inherited ones included."""
    return bool(_native.ane_class_answers(class_name, selector, bool(class_method)))


def shared_event_probe():
    """What constructing the framework's shared-event objects gives (a probe's raw report)."""
    return _native.ane_shared_event_probe()


def process_compiles():
    """ANE compiles this process has attempted (the ~119-per-process limit counts these)."""
    return int(_native.ane_process_compiles())


def _kernel_probe(name):
    fn = getattr(_native, name, None)
    if fn is None:
        raise RuntimeError(f"{name.removeprefix('ane_')} needs the ANE backend of a macOS build")
    return fn


def kernel_info(kernel):
    """Compile and load times, model directory and surface plan of a kernel compiled on the ANE."""
    return _kernel_probe("ane_kernel_info")(kernel._native)


def reload_kernel(kernel):
    """Unload and load the kernel's program again (does a rewritten weight file take effect?)."""
    _kernel_probe("ane_kernel_reload")(kernel._native)


def overwrite_model_file(kernel, relative_path, data):
    """Rewrite one file of the kernel's model directory (e.g. its weight blob)."""
    _kernel_probe("ane_kernel_overwrite_model_file")(kernel._native, relative_path, data)


def eval_variant(kernel, inputs, outputs, procedure_index=0, weights=b""):
    """Evaluate with a request's procedure index and, when given, a weights buffer."""
    _kernel_probe("ane_kernel_eval_variant")(kernel._native, inputs, outputs, procedure_index, weights)


def eval_with_perf_stats(kernel, inputs, outputs, mask=0xFF):
    """Evaluate with the framework's performance statistics requested; returns what it reports."""
    return _kernel_probe("ane_kernel_eval_with_perf_stats")(kernel._native, inputs, outputs, mask)
