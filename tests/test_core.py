"""Layer 1: the native core — fp16 conversion, the BLAS shim, build info, import location."""
import os
import subprocess
import sys

import numpy as np
import pytest

import anetrain
from anetrain import fp16

ALL_HALF_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
PATHS = fp16.paths()


@pytest.fixture(params=PATHS)
def path(request):
    fp16.set_path(request.param)
    yield request.param
    fp16.set_path("auto")


def test_scalar_path_always_available():
    assert "scalar" in PATHS
    assert fp16.active_path() in PATHS


def test_all_halves_to_float_exact(path):
    halves = ALL_HALF_BITS.view(np.float16)
    ours = fp16.to_float(halves)
    ref = halves.astype(np.float32)
    nan = np.isnan(ref)
    assert nan.sum() == 2046
    np.testing.assert_array_equal(ours.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    assert np.isnan(ours[nan]).all()
    # sign and payload survive (quieted: bit 22 set)
    ref_bits = ALL_HALF_BITS[nan].astype(np.uint32)
    got = ours[nan].view(np.uint32)
    np.testing.assert_array_equal(got >> 31, ref_bits >> 15)
    np.testing.assert_array_equal((got >> 13) & 0x1FF, ref_bits & 0x1FF)
    assert ((got >> 22) & 1).all()


def test_all_halves_round_trip(path):
    halves = ALL_HALF_BITS.view(np.float16)
    finite = ~np.isnan(halves)
    back = fp16.to_half(fp16.to_float(halves))
    np.testing.assert_array_equal(back.view(np.uint16)[finite], ALL_HALF_BITS[finite])
    assert np.isnan(back[~finite]).all()


def _edge_floats():
    rng = np.random.default_rng(7)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.996, 65520.0, -65520.0, 1e6,
                         2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 3 * 2.0**-26, 2.0**-14,
                         2.0**-14 - 2.0**-25, 1e-8, -1e-8, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11,
                         np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45], dtype=np.float32)
    # every fp32 value exactly halfway between two adjacent halves (the tie cases), both signs
    h = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = ((h[:-1] + h[1:]) / 2).astype(np.float32)
    randoms = np.concatenate([
        rng.standard_normal(1 << 16).astype(np.float32) * 100,
        (rng.random(1 << 16) * 2.0**-14).astype(np.float32),              # subnormal range
        rng.integers(0, 2**32, 1 << 16, dtype=np.uint64).astype(np.uint32).view(np.float32),  # any bits
    ])
    x = np.concatenate([specials, mids, randoms, -specials, -mids])
    return x


def test_float_to_half_matches_numpy(path):
    x = _edge_floats()
    ours = fp16.to_half(x)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x.astype(np.float16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(ours.view(np.uint16)[~nan], ref.view(np.uint16)[~nan])
    assert np.isnan(ours[nan]).all()


def test_round_to_half_matches_numpy(path):
    x = _edge_floats()
    ours = fp16.round_to_half(x)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x.astype(np.float16).astype(np.float32)
    nan = np.isnan(x)
    np.testing.assert_array_equal(ours.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    assert np.isnan(ours[nan]).all()


@pytest.mark.parametrize("n", [0, 1, 7, 8, 15, 16, 33, 1000, (1 << 20) + 13, (3 << 20) + 5])
def test_lengths_and_misaligned_views(path, n):
    rng = np.random.default_rng(n)
    base = rng.standard_normal(n + 3).astype(np.float32)
    x = base[1:n + 1]  # misaligned start
    np.testing.assert_array_equal(fp16.to_half(x).view(np.uint16), x.astype(np.float16).view(np.uint16))
    h = x.astype(np.float16)
    hb = np.concatenate([[np.float16(0)], h])[1:]  # misaligned half buffer
    np.testing.assert_array_equal(fp16.to_float(hb), h.astype(np.float32))


def test_out_argument_and_errors():
    x = np.linspace(-3, 3, 100, dtype=np.float32).reshape(10, 10)
    out = np.empty((10, 10), np.float16)
    assert fp16.to_half(x, out=out) is out
    np.testing.assert_array_equal(out, x.astype(np.float16))
    assert fp16.to_half(x).shape == (10, 10)
    np.testing.assert_array_equal(fp16.to_half(x.T), x.T.astype(np.float16))  # non-contiguous input
    with pytest.raises(TypeError, match="float32"):
        fp16.to_half(x.astype(np.float64))
    with pytest.raises(ValueError, match="out"):
        fp16.to_half(x, out=np.empty((5,), np.float16))
    with pytest.raises(ValueError, match="unknown fp16 path"):
        fp16.set_path("mmx")


@pytest.mark.parametrize("m,n,k,ta,tb", [(1, 1, 1, False, False), (64, 48, 32, False, False),
                                          (257, 130, 77, True, False), (31, 65, 129, False, True),
                                          (96, 96, 96, True, True)])
def test_sgemm_matches_numpy(m, n, k, ta, tb):
    rng = np.random.default_rng(m * n + k)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    got = anetrain._native.sgemm(a, b, ta, tb)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.sqrt(k))


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_sgemm_into_out_scales_and_accumulates(ta, tb):
    rng = np.random.default_rng(7)
    m, n, k = 37, 29, 41
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    c = c0.copy()
    got = anetrain._native.sgemm(a, b, ta, tb, out=c, alpha=0.5, beta=2.0)
    assert got is c
    ref = 0.5 * (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64) + 2.0 * c0
    np.testing.assert_allclose(c, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_sgemm_batch_matches_numpy(ta, tb):
    rng = np.random.default_rng(8)
    B, m, n, k = 3, 17, 23, 19
    a = rng.standard_normal((B, k, m) if ta else (B, m, k)).astype(np.float32)
    b = rng.standard_normal((B, n, k) if tb else (B, k, n)).astype(np.float32)
    ref = np.matmul(a.transpose(0, 2, 1) if ta else a, b.transpose(0, 2, 1) if tb else b)
    np.testing.assert_allclose(anetrain._native.sgemm_batch(a, b, ta, tb), ref, rtol=1e-5, atol=1e-5)
    out = np.full((B, m, n), np.nan, np.float32)
    assert anetrain._native.sgemm_batch(a, b, ta, tb, out=out) is out
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_sgemm_out_must_fit():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="out must be a writable C-contiguous float32 array of shape \\(2, 4\\)"):
        anetrain._native.sgemm(a, b, out=np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match="out"):
        anetrain._native.sgemm(a, b, out=np.empty((2, 4), np.float64))
    with pytest.raises(TypeError, match="out must be a numpy array"):
        anetrain._native.sgemm(a, b, out=[[0.0] * 4] * 2)
    with pytest.raises(ValueError, match="beta needs out="):
        anetrain._native.sgemm(a, b, beta=1.0)
    with pytest.raises(ValueError, match="out"):
        anetrain._native.sgemm_batch(a[None], b[None], out=np.empty((1, 2, 5), np.float32))


def test_sgemm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="inner"):
        anetrain._native.sgemm(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))


def test_info_names_the_build():
    info = anetrain.info()
    for key in ("platform", "arch", "simd", "fp16_paths", "blas", "blas_core", "threads", "backends", "version"):
        assert key in info, key
    assert info["simd"] in info["fp16_paths"]
    assert "ref" in info["backends"]
    assert info["threads"] >= 1
    if sys.platform.startswith("linux"):
        assert info["platform"] == "linux"
        assert "OpenBLAS" in info["blas"]
        assert info["blas_core"]  # the kernel family OpenBLAS picked (e.g. Haswell, SkylakeX)
        coretype = os.environ.get("OPENBLAS_CORETYPE")
        if coretype:
            assert info["blas_core"].lower() == coretype.lower()
    if info["arch"] == "x86_64":
        assert "f16c" in info["fp16_paths"] or info["simd"] == "scalar"


def test_import_from_another_directory(tmp_path):
    code = "import anetrain, numpy as np; print(anetrain.fp16.to_half(np.ones(3, np.float32)).tolist())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0, 1.0, 1.0]"


def test_env_selects_fp16_path(tmp_path):
    code = "import anetrain; print(anetrain.fp16.active_path())"
    env = dict(os.environ, ANETRAIN_FP16_PATH="scalar")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.stdout.strip() == "scalar", out.stderr


def test_returned_arrays_recycle_memory_without_sharing_it():
    n = 1 << 20  # 4 MiB of float32: large enough to be cached
    x = np.arange(n, dtype=np.float32) % 1024  # + 2 stays exact in fp16
    a = fp16.to_float(fp16.to_half(x))
    b = fp16.to_float(fp16.to_half(x + 1))
    assert not np.shares_memory(a, b)  # live arrays never share a buffer
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(b, x + 1)
    ptr = a.ctypes.data
    del a
    c = fp16.to_float(fp16.to_half(x + 2))
    assert c.ctypes.data == ptr  # the freed buffer was reused ...
    np.testing.assert_array_equal(c, x + 2)  # ... and fully overwritten
    assert c.ctypes.data % 64 == 0
    del b, c
    assert 0 < anetrain._native.buffer_cache_bytes() <= 256 << 20
    anetrain._native.buffer_cache_clear()
    assert anetrain._native.buffer_cache_bytes() == 0


def test_buffer_cache_stays_bounded():
    anetrain._native.buffer_cache_clear()
    arrays = [fp16.to_float(np.zeros(16 << 20, np.float16)) for _ in range(6)]  # 6 x 64 MiB
    del arrays
    assert anetrain._native.buffer_cache_bytes() <= 256 << 20
    anetrain._native.buffer_cache_clear()
