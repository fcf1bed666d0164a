"""The model config's rules are defined once (native/train/config.cpp and the shape rules in
native/mil/kernels.cpp): the Python config, the native config, the kernel generators and the
command line refuse the same shapes with the same words."""
import subprocess
import sys
import os

import pytest

from anetrain import _native
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
                     n_kv_heads=args["n_kv_heads"], seq_len=args["seq_len"], rope_theta=args.get("rope_theta", 1e4))
        kernel_ok = True
        try:
            _native.model_kernel("attention_forward", shape, "dynamic")
        except ValueError as e:
            kernel_ok = False
            native_msg = str(pytest.raises(ValueError, _native.ModelConfig, **args).value)
            assert str(e) in native_msg, (kw, str(e), native_msg)  # the same rule, the same words
        if kernel_ok:  # a rule of the model (vocab, layers, eps), not of the kernels' shape
            assert set(kw) & {"vocab_size", "n_layers", "norm_eps"}, kw


def test_good_configs_pass_everywhere():
    for kw in ({}, dict(n_kv_heads=2), dict(n_kv_heads=0), dict(hidden_dim=0)):
        c = ModelConfig(**dict(BASE, **kw))
        _native.ModelConfig(**c.native_kwargs())


def test_the_command_line_gives_the_rule_as_one_line():
    p = subprocess.run([sys.executable, "scripts/train.py", "--dim", "36", "--n-heads", "4", "--out", "/nonexistent/x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: model head_dim 9 (dim 36 / n_heads 4) must be even for RoPE's pairs; "
        "pick dim and n_heads whose quotient is even"]


def test_the_default_hidden_dim_has_one_definition_and_refuses_cleanly():
    # llama2.c's published FFN widths (stories15M/42M/110M), reached through the Python config
    for dim, hidden in ((288, 768), (512, 1376), (768, 2048)):
        assert ModelConfig(**dict(BASE, dim=dim, n_heads=4, n_kv_heads=4, hidden_dim=0)).hidden_dim == hidden
    # a dim whose derived width no C int holds is a usage error, not an overflow or a traceback
    with pytest.raises(UsageError, match=r"^model dim 1000000000 gives a hidden_dim of \d+, more than a C int"):
        ModelConfig(**dict(BASE, dim=10 ** 9, hidden_dim=0))
    with pytest.raises(UsageError, match=r"^model dim and multiple_of must be positive"):
        ModelConfig(**dict(BASE, dim=64, multiple_of=0, hidden_dim=0))
