"""ModelConfig: llama2.c's sizes, the parameter list by llama2.c name, one-line validation errors."""
import pytest

from anetrain._native import ModelConfig


def stories(dim, n_layers, n_heads, **kw):
    return ModelConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, vocab_size=32000, seq_len=256, **kw)


@pytest.mark.parametrize("dim,hidden", [(288, 768), (512, 1376), (768, 2048)])
def test_default_hidden_dim_follows_llama2c(dim, hidden):
    # Published llama2.c stories15M / 42M / 110M feed-forward sizes.
    assert ModelConfig.default_hidden_dim(dim) == hidden
    assert stories(dim, 1, 8 if dim % 8 == 0 else 6).hidden_dim == hidden


def test_stories110m_parameter_count():
    cfg = stories(768, 12, 12)
    assert cfg.param_count == 109_529_856  # the BLZT checkpoint body's tensor count (ane-facts 7.2)
    assert cfg.head_dim == 64 and cfg.kv_dim == 768 and cfg.n_kv_heads == 12


def test_gqa_sizes_and_explicit_hidden_dim():
    cfg = ModelConfig(dim=64, n_layers=3, n_heads=8, n_kv_heads=2, vocab_size=100, hidden_dim=96, seq_len=16)
    assert (cfg.head_dim, cfg.kv_dim, cfg.hidden_dim) == (8, 16, 96)
    per_layer = 2 * 64 * 64 + 2 * 16 * 64 + 3 * 96 * 64 + 2 * 64
    assert cfg.layer_param_count == per_layer
    assert cfg.param_count == 100 * 64 + 3 * per_layer + 64


@pytest.mark.torch
def test_param_specs_name_every_tensor_like_torch_ref():
    import torch
    from anetrain import torch_reference as torch_ref

    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, seq_len=8)
    specs = cfg.param_specs()
    ref = {name: tuple(p.shape) for name, p in torch_ref.Transformer(cfg).weights().items()}
    assert {name: shape for name, shape, _ in specs} == ref
    assert [n for n, _, _ in specs[:3]] == ["tok_embeddings", "layers.0.attention.wq", "layers.0.attention.wk"]
    assert specs[-1][0] == "norm"
    assert {name for name, _, decay in specs if not decay} == {n for n in ref if n.endswith("norm")}
    assert sum(torch.Size(s).numel() for _, s, _ in specs) == cfg.param_count


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(dim=30, n_heads=4), "dim 30 is not divisible by n_heads 4"),
        (dict(dim=36, n_heads=4), "head_dim 9 .* must be even"),
        (dict(dim=48, n_heads=6, n_kv_heads=4), "n_heads 6 is not a multiple of n_kv_heads 4"),
        (dict(n_kv_heads=9), "n_kv_heads must be 0 .* or between 1 and n_heads 8"),
        (dict(vocab_size=0), "vocab_size must be positive"),
        (dict(seq_len=-1), "seq_len must be positive"),
        (dict(n_layers=0), "n_layers must be positive"),
        (dict(norm_eps=0.0), "norm_eps must be positive"),
    ],
)
def test_invalid_configs_fail_with_one_line(kw, message):
    args = dict(dim=64, n_layers=2, n_heads=8, vocab_size=100, seq_len=16) | kw
    with pytest.raises(ValueError, match=message) as e:
        ModelConfig(**args)
    assert "\n" not in str(e.value) and str(e.value).startswith("ModelConfig: ")
