"""Telemetry: the FLOP model against a hand count, JSON-lines records, and the efficiency report."""
import io
import json

import pytest

from anetrain import telemetry
from anetrain.config import ModelConfig, model_preset


def test_flops_hand_count_small_gqa():
    # dim 8, 2 layers, 2 heads of 4, 1 kv head (kv_dim 4), hidden 12, vocab 10, seq 3
    cfg = ModelConfig(dim=8, hidden_dim=12, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=10, seq_len=3)
    macs_proj = 8 * 8 + 8 * 4 + 8 * 4 + 8 * 8 + 3 * 8 * 12   # wq wk wv wo w1 w2 w3 = 480
    macs_attn = 3 * 8 + 3 * 8                                 # QK^T and PV over 3 positions = 48
    forward = 2 * (2 * (macs_proj + macs_attn) + 8 * 10)      # + classifier 80 MACs
    assert forward == 2272
    assert telemetry.flops_per_token(cfg) == {"forward": 2272, "backward": 4544, "train": 6816}


def test_flops_hand_count_heads_wider_than_dim():
    # dim 8, 2 heads of 6 (q_dim 12 != dim), 1 kv head (kv_dim 6), hidden 12, vocab 10, seq 3;
    # QK-norm and an untied classifier add no counted FLOPs
    cfg = ModelConfig(dim=8, hidden_dim=12, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=6, vocab_size=10,
                      seq_len=3, qk_norm=True, tie_embeddings=False)
    macs_proj = 8 * 12 + 8 * 6 + 8 * 6 + 12 * 8 + 3 * 8 * 12  # wq wk wv wo w1 w2 w3 = 576
    macs_attn = 3 * 12 + 3 * 12                                # QK^T and PV over 3 positions, q_dim 12 = 72
    forward = 2 * (2 * (macs_proj + macs_attn) + 8 * 10)       # + classifier 80 MACs
    assert forward == 2752
    assert telemetry.flops_per_token(cfg) == {"forward": 2752, "backward": 5504, "train": 8256}


def test_flops_qwen3_0_6b_close_to_6n_rule():
    # tied: the embedding counted once is the classifier; norms (with the QK-norm gains) cost nothing
    cfg = model_preset("qwen3-0.6B")
    attn = 3 * 28 * 4 * 256 * 2048
    norms = 6 * ((2 * 28 + 1) * 1024 + 28 * 2 * 128)
    assert telemetry.flops_per_token(cfg)["train"] == 6 * cfg.n_params() - norms + attn


def test_flops_stories110m_close_to_6n_rule():
    # training FLOPs/token ~ 6 * params plus attention; the embedding lookup costs nothing but
    # the tied classifier costs 6*dim*vocab, so 6*n_params + attention is the reference
    cfg = model_preset("stories110M")
    attn = 3 * 12 * 4 * 256 * 768
    norms = 6 * (2 * 12 + 1) * 768
    assert telemetry.flops_per_token(cfg)["train"] == 6 * cfg.n_params() - norms + attn


def test_step_record_and_tflops():
    rec = telemetry.step_record(7, 3.5, 1e-3, 0.25, {"fwd": 400.0, "bwd": 600.0}, tokens=1000,
                                train_flops_per_token=1e9, compiles=2, val_loss=3.7)
    assert rec["step_ms"] == 1000.0 and rec["tflops"] == pytest.approx(1.0)
    assert rec["ms"] == {"fwd": 400.0, "bwd": 600.0} and rec["val_loss"] == 3.7 and rec["compiles"] == 2


def test_step_log_writes_json_lines_and_mirrors(tmp_path):
    path = tmp_path / "metrics.jsonl"
    err = io.StringIO()
    with telemetry.StepLog(str(path), mirror=True, stream=err) as log:
        for s in range(3):
            log.write(telemetry.step_record(s, 5.0 - s, 1e-3, 1.0, {"all": 10.0}, 128, 1e6))
        log.write({"event": "eval", "step": 2, "val_loss": 4.0})
    lines = path.read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1, 2, 2]
    assert "time" in json.loads(lines[0])
    out = err.getvalue().splitlines()
    assert len(out) == 3 and out[2].startswith("step      2 | loss 3.0000")
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')                       # a crash mid-line
    assert len(telemetry.read_log(str(path))) == 4


def test_efficiency_report():
    e = telemetry.efficiency(wall_s=100.0, compile_s=20.0, train_s=75.0, steps=500,
                             tokens_per_step=2048, train_flops_per_token=1e9)
    assert e["compile_share"] == 0.2 and e["train_share"] == 0.75 and e["other_s"] == 5.0
    assert e["ms_per_step"] == 150.0
    assert e["tflops_train"] == pytest.approx(500 * 2048 * 1e9 / 75 / 1e12)
    assert e["tflops_wall"] == pytest.approx(500 * 2048 * 1e9 / 100 / 1e12)
    text = telemetry.format_report(e)
    assert "(20.0%)" in text and "150.0 ms/step" in text and len(text.splitlines()) == 6


def test_placement_lines_name_every_fallback_and_its_reason():
    p = telemetry.placement([("attention_forward", "ane", ""), ("ffn_forward", "ref", "ane: ANE compile failed: Code=3"),
                             ("ffn_backward", "ane", ""), ("attention_backward", "ane", "")], "ane", True)
    assert p["kernels"]["ffn_forward"] == {"backend": "ref", "reason": "ane: ANE compile failed: Code=3"}
    lines = telemetry.placement_lines(p)
    assert lines[0] == ("kernels (ane-shaped programs): attention_forward, ffn_backward, attention_backward on ane; "
                        "ffn_forward on ref (fallback)")
    assert lines[1:] == ["  ffn_forward runs on ref, not ane: ane: ANE compile failed: Code=3"]
