"""The model config's rules are defined once (native/train/config.cpp and the shape rules in
native/mil/kernels.cpp): the Python config, the native config, the kernel generators and the
command line refuse the same shapes with the same words."""
import subprocess
import sys
import os

import pytest

from anetrain import _native, config
from anetrain.config import ModelConfig
from anetrain.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=100, seq_len=32, hidden_dim=128)
BAD = [
    dict(dim=30),                 # not divisible by n_heads
    dict(dim=36),                 # head_dim 9: odd
    dict(dim=12),                 # head_dim 3: odd
    dict(n_kv_heads=3),           # n_heads not a multiple
    dict(n_kv_heads=8),           # more KV heads than heads
    dict(vocab_size=0),
    dict(n_layers=0),
    dict(seq_len=0),
    dict(hidden_dim=-1),
    dict(norm_eps=0.0),
    dict(norm_eps=float("nan")),
    dict(rope_theta=float("inf")),
    dict(rope_theta=-1.0),
    dict(head_dim=-2),
    dict(head_dim=7),             # explicit and odd
    dict(head_dim=7, qk_norm=True, tie_embeddings=False),
    dict(n_heads=4, head_dim=2 ** 30),  # q_dim beyond a C int
    dict(norm_eps=-1e-6, qk_norm=True),
]


@pytest.mark.parametrize("kw", BAD, ids=[",".join(f"{k}={v}" for k, v in kw.items()) for kw in BAD])
def test_python_and_native_configs_refuse_alike(kw):
    args = dict(BASE, **kw)
    with pytest.raises(ValueError) as native:
        _native.ModelConfig(**args)
    assert str(native.value).startswith("ModelConfig: ") and "\n" not in str(native.value)
    with pytest.raises(UsageError) as py:
        ModelConfig(**args)
    assert str(py.value) == "model " + str(native.value)[len("ModelConfig: "):]


def test_the_kernel_generators_refuse_what_the_config_refuses():
    for kw in BAD:
        args = dict(BASE, **kw)
        shape = dict(dim=args["dim"], hidden_dim=args["hidden_dim"], n_heads=args["n_heads"],
                     n_kv_heads=args["n_kv_heads"], seq_len=args["seq_len"], rope_theta=args.get("rope_theta", 1e4),
                     head_dim=args.get("head_dim", 0), qk_norm=args.get("qk_norm", False),
                     norm_eps=args.get("norm_eps", 1e-5))
        kernel_ok = True
        try:
            _native.model_kernel("attention_forward", shape, "dynamic")
        except ValueError as e:
            kernel_ok = False
            native_msg = str(pytest.raises(ValueError, _native.ModelConfig, **args).value)
            assert str(e) in native_msg, (kw, str(e), native_msg)  # the same rule, the same words
        if kernel_ok:  # a rule of the model (vocab, layers), not of the kernels' shape
            assert set(kw) & {"vocab_size", "n_layers"}, kw


GOOD = [{}, dict(n_kv_heads=2), dict(n_kv_heads=0), dict(hidden_dim=0),
        dict(head_dim=32, qk_norm=True, tie_embeddings=False, rope_theta=1e6, norm_eps=1e-6),  # q_dim 128 != dim
        dict(dim=50, head_dim=16)]  # dim need not divide by n_heads when head_dim is given


@pytest.mark.parametrize("kw", GOOD, ids=[",".join(f"{k}={v}" for k, v in kw.items()) or "base" for kw in GOOD])
def test_good_configs_pass_everywhere(kw):
    c = ModelConfig(**dict(BASE, **kw))
    n = _native.ModelConfig(**c.native_kwargs())
    assert (c.head_dim, c.q_dim, c.kv_dim) == (n.head_dim, n.q_dim, n.kv_dim)
    assert c.head_dim == kw.get("head_dim") or c.dim // c.n_heads
    shape = config.kernel_shape(c)
    for name in _native.model_kernel_names():
        _native.model_kernel(name, shape, "dynamic")


def test_bad_field_types_are_one_line_usage_errors():
    for kw, words in ((dict(qk_norm="yes"), "qk_norm must be true or false"),
                      (dict(head_dim=16.0), "head_dim must be an integer"),
                      (dict(rope_theta="1e6"), "rope_theta must be a number")):
        with pytest.raises(UsageError, match=words):
            ModelConfig(**dict(BASE, **kw))


def test_the_command_line_gives_the_rule_as_one_line():
    p = subprocess.run([sys.executable, "scripts/train.py", "--dim", "36", "--n-heads", "4", "--out", "/nonexistent/x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: model head_dim 9 (dim 36 / n_heads 4) must be even for RoPE's pairs; "
        "pick dim and n_heads whose quotient is even"]
    p = subprocess.run([sys.executable, "scripts/train.py", "--head-dim", "7", "--qk-norm", "--out", "/nonexistent/x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["error: model head_dim 7 must be even for RoPE's pairs"]


def test_the_default_hidden_dim_has_one_definition_and_refuses_cleanly():
    # llama2.c's published FFN widths (stories15M/42M/110M), reached through the Python config
    for dim, hidden in ((288, 768), (512, 1376), (768, 2048)):
        assert ModelConfig(**dict(BASE, dim=dim, n_heads=4, n_kv_heads=4, hidden_dim=0)).hidden_dim == hidden
    # a dim whose derived width no C int holds is a usage error, not an overflow or a traceback
    with pytest.raises(UsageError, match=r"^model dim 1000000000 gives a hidden_dim of \d+, more than a C int"):
        ModelConfig(**dict(BASE, dim=10 ** 9, hidden_dim=0))
    with pytest.raises(UsageError, match=r"^model dim and multiple_of must be positive"):
        ModelConfig(**dict(BASE, dim=64, multiple_of=0, hidden_dim=0))
