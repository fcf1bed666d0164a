"""Configs: presets against llama2.c's published shapes, precedence CLI > file > preset, the lr
schedule against hand-computed values, and every usage error as one line with exit status 2."""
import json
import re
import subprocess
import sys

import pytest

from anetrain import config
from anetrain.config import ModelConfig, TrainConfig, lr_at, model_preset, parse_args
from anetrain.errors import UsageError


@pytest.mark.parametrize("name,dim,hidden,layers,heads", [
    ("stories15M", 288, 768, 6, 6),      # llama2.c's model files carry these hidden sizes
    ("stories42M", 512, 1376, 8, 8),
    ("stories110M", 768, 2048, 12, 12),
])
def test_stories_presets_match_llama2c(name, dim, hidden, layers, heads):
    m = model_preset(name)
    assert (m.dim, m.hidden_dim, m.n_layers, m.n_heads, m.n_kv_heads, m.vocab_size) == \
        (dim, hidden, layers, heads, heads, 32000)


def test_stories110m_parameter_count_matches_reference():
    # ane-facts 7.2: the Stories110M checkpoint body is 4*3*109,529,856 bytes (weights, m, v)
    assert model_preset("stories110M").n_params() == 109_529_856


def test_memory_model_counts_the_rounded_weight_copy_of_the_layers():
    # Stories110M by hand: per layer wq, wk, wv, wo 768x768, w1, w2, w3 768x2048, two 768 gains
    layer_params = 4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768
    cfg = model_preset("stories110M")
    plain, rounded = cfg.training_memory(), cfg.training_memory(rounded_weights=True)
    assert rounded.pop("rounded_weights") == 4 * 12 * layer_params
    assert rounded == plain and "rounded_weights" not in plain


def test_qwen_preset_is_qwen3_0_6b():
    # Qwen/Qwen3-0.6B's config.json
    m = model_preset("qwen3-0.6B")
    assert (m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.hidden_dim, m.vocab_size) == \
        (1024, 28, 16, 8, 128, 3072, 151936)
    assert (m.q_dim, m.kv_dim) == (2048, 1024) and m.qk_norm and m.tie_embeddings
    assert (m.rope_theta, m.norm_eps) == (1e6, 1e-6)
    # the released model's tensors by their shapes: embed_tokens (tied); per layer q/k/v/o_proj,
    # q_norm, k_norm, gate/up/down_proj, two layer norms; the final norm
    per_layer = 1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 2 * 128 + 3 * 1024 * 3072 + 2 * 1024
    assert 151936 * 1024 + 28 * per_layer + 1024 == 596_049_920
    assert m.n_params() == 596_049_920


@pytest.mark.torch
@pytest.mark.transformers
def test_qwen_preset_counts_as_transformers_qwen3_does():
    import torch
    import transformers

    m = model_preset("qwen3-0.6B")
    cfg = transformers.Qwen3Config(hidden_size=m.dim, intermediate_size=m.hidden_dim, num_hidden_layers=m.n_layers,
                                   num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                                   head_dim=m.head_dim, vocab_size=m.vocab_size, tie_word_embeddings=True)
    with torch.device("meta"):  # shapes only, no memory
        model = transformers.Qwen3ForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == m.n_params()


def test_tiny_preset_matches_shipped_tokenizer():
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=f"{config.REPO_DATA}/tokenizer.model")
    assert model_preset("tiny").vocab_size == sp.get_piece_size()


def test_defaults_use_shipped_data():
    model, train = parse_args([])
    assert model.name == "tiny"
    assert train.data.endswith("data/train_*.bin") and train.val_data.endswith("data/val_*.bin")
    assert train.tokenizer.endswith("data/tokenizer.model")


def test_cli_beats_file_beats_preset(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "stories15M"\nsteps = 50\nlr = 5e-4\nbatch_size = 4\n'
                 '[model]\nseq_len = 64\nn_layers = 3\n')
    model, train = parse_args(["--config", str(f), "--steps", "7", "--n-layers", "2",
                               "--data", "x/*.bin"])
    assert train.steps == 7 and train.lr == 5e-4 and train.batch_size == 4
    assert model.n_layers == 2 and model.seq_len == 64 and model.dim == 288
    assert train.data == "x/*.bin" and train.val_data == ""


def test_json_config_and_int_promoted_to_float(tmp_path):
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"lr": 1, "pipeline": "static", "resume": True}))
    _, train = parse_args(["--config", str(f), "--data", "x"])
    assert train.lr == 1.0 and isinstance(train.lr, float) and train.pipeline == "static" and train.resume


def test_ckpt_implies_resume():
    _, train = parse_args(["--ckpt", "runs/a/ckpt_00000010.safetensors"])
    assert train.resume


def test_dim_override_recomputes_hidden_by_llama2c_rule():
    model, _ = parse_args(["--preset", "stories15M", "--dim", "256", "--n-heads", "8", "--data", "x"])
    assert model.hidden_dim == 704 and model.n_kv_heads == 8   # int(2*1024/3)=682 -> 704


def test_init_from_gives_the_shape(tmp_path):
    found = ModelConfig(name="m", dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=1024, hidden_dim=200,
                        seq_len=512, norm_eps=1e-6, rope_theta=5e5)
    src = tmp_path / "model"
    src.mkdir()

    def parse(*argv):
        return parse_args(["--init-from", str(src), *argv], init_model=lambda path: found)[0]

    model = parse()  # no flags: all of it from the model, the tiny preset ignored
    assert model.to_dict() == found.to_dict()
    assert parse("--seq-len", "64").seq_len == 64                          # a training choice
    assert parse("--dim", "96", "--n-kv-heads", "2", "--hidden-dim", "0").to_dict() == found.to_dict()
    for argv, needle in [(["--dim", "128"], "dim 96 vs 128"), (["--n-kv-heads", "6"], "n_kv_heads 2 vs 6"),
                         (["--preset", "tiny"], "dim 96 vs 128, n_layers 3 vs 4, n_heads 6 vs 4")]:
        with pytest.raises(UsageError, match=f"holds another model \\({needle}"):
            parse(*argv)


# Every documented setting of scripts/train.py, written out by hand (not read from config's own
# tables), so a flag dropped from the parser or from its help fails here.
DOCUMENTED_FLAGS = [
    "--config", "--preset", "--data", "--val-data", "--val-fraction", "--tokenizer", "--out",
    "--steps", "--batch-size", "--accum-steps", "--lr", "--min-lr-ratio", "--warmup-steps",
    "--weight-decay", "--beta1", "--beta2", "--grad-clip", "--loss-scale", "--pipeline", "--backend",
    "--ane-shaped", "--compile-budget", "--seed", "--eval-interval", "--eval-windows",
    "--sample-interval", "--sample-tokens", "--ckpt-interval", "--keep-last", "--resume", "--ckpt",
    "--overwrite", "--init-from", "--log-stderr",
    # data parallel (under torchrun)
    "--allreduce", "--sync-check", "--dist-timeout", "--reshard",
    # model shape overrides
    "--dim", "--n-layers", "--n-heads", "--n-kv-heads", "--vocab-size", "--seq-len", "--hidden-dim",
    "--head-dim", "--rope-theta", "--norm-eps", "--qk-norm", "--no-qk-norm", "--tie-embeddings",
    "--no-tie-embeddings",
]


def test_help_explains_every_setting():
    text = config.build_parser().format_help()
    listed = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    missing = [flag for flag in DOCUMENTED_FLAGS if flag not in listed]
    assert not missing, f"--help no longer lists {missing}"


@pytest.mark.parametrize("argv,needle", [
    (["--preset", "gpt5"], "unknown preset 'gpt5'"),
    (["--backend", "gpu"], "unknown backend 'gpu'"),
    (["--pipeline", "fast"], "unknown pipeline 'fast'"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--preset", "stories15M", "--n-heads", "5"], "not divisible by n_heads"),
    (["--preset", "stories15M"], "does not fit the shipped data/ corpus"),
    (["--n-kv-heads", "3"], "not a multiple of n_kv_heads"),
    (["--config", "/nonexistent/run.toml"], "not found"),
    (["--allreduce", "sometimes"], "unknown --allreduce 'sometimes'; choose after or overlap"),
    (["--sync-check", "-1"], "--sync-check must not be negative"),
    (["--dist-timeout", "0"], "--dist-timeout must be a finite number of seconds > 0"),
])
def test_usage_errors_are_one_line(argv, needle):
    with pytest.raises(UsageError) as e:
        parse_args(argv)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,suffix,needle", [
    ('stepz = 3\n', ".toml", "unknown setting 'stepz'"),
    ('steps = "many"\n', ".toml", "steps must be int"),
    ('[model]\nwidth = 3\n', ".toml", "unknown model field 'width'"),
    ('steps = \n', ".toml", "not valid TOML"),
    ('{"steps": 3', ".json", "not valid JSON"),
])
def test_bad_config_files(tmp_path, text, suffix, needle):
    f = tmp_path / ("c" + suffix)
    f.write_text(text)
    with pytest.raises(UsageError) as e:
        parse_args(["--config", str(f)])
    assert needle in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_cli_error_line_and_exit_status():
    code = ("import sys; from anetrain.config import parse_args; from anetrain.errors import exit_on_error;"
            "exit_on_error(lambda: parse_args(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "--preset", "nope"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: unknown preset 'nope'") and r.stderr.count("\n") == 1


def test_lr_schedule_hand_values():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, steps=111, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)          # (0+1)/10 of peak
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)          # cosine starts at the peak
    assert lr_at(60, cfg) == pytest.approx(0.55e-3)       # halfway: floor + half the range
    assert lr_at(35, cfg) == pytest.approx(1e-4 + 0.9e-3 * (1 + 2 ** -0.5) / 2)  # cos(pi/4)
    assert lr_at(110, cfg) == pytest.approx(1e-4)         # last step reaches the floor
    assert lr_at(500, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_lr_without_warmup_and_single_step():
    assert lr_at(0, TrainConfig(lr=2e-3, warmup_steps=0, steps=1)) == pytest.approx(2e-3)
    assert lr_at(0, TrainConfig(lr=2e-3, warmup_steps=0, steps=101)) == pytest.approx(2e-3)


def test_model_config_validation():
    with pytest.raises(UsageError):
        ModelConfig(dim=0)
    m = ModelConfig(dim=64, n_layers=2, n_heads=4, vocab_size=100, seq_len=16)
    assert m.native_kwargs()["hidden_dim"] == 192 and m.native_kwargs()["n_kv_heads"] == 4
