"""MIL blob storage v2: byte layout against the format spec, computed by hand with struct."""
import struct

import numpy as np
import pytest

from anetrain.mil import blob_records, pack_weights, unpack_weights


def test_single_fp16_blob_layout():
    w = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5).astype(np.float16)
    data, offsets = pack_weights([w])
    assert offsets == [64]
    assert len(data) == 128 + 64  # 24 data bytes padded to 64
    count, version = struct.unpack_from("<II", data, 0)
    assert (count, version) == (1, 2)
    assert data[8:64] == bytes(56)
    sentinel, dtype, size, data_off, pad_bits = struct.unpack_from("<IIQQQ", data, 64)
    assert (sentinel, dtype, size, data_off, pad_bits) == (0xDEADBEEF, 1, 24, 128, 0)
    assert data[64:68] == b"\xef\xbe\xad\xde"
    assert data[96:128] == bytes(32)
    assert data[128:152] == w.tobytes()  # row-major fp16, little-endian
    assert data[152:] == bytes(40)


def test_multi_blob_offsets_and_dtypes():
    a = np.ones((2, 3), np.float16)              # 12 bytes
    b = np.arange(20, dtype=np.float32)           # 80 bytes -> padded 128
    c = np.array([-128, 0, 127], np.int8)         # 3 bytes
    data, offsets = pack_weights([a, b, c])
    # record i at the previous data end rounded up to 64
    assert offsets == [64, 64 + 64 + 64, 192 + 64 + 128]
    assert struct.unpack_from("<II", data, 0) == (3, 2)
    expect = [(1, 12, a), (2, 80, b), (4, 3, c)]
    for off, (code, size, arr) in zip(offsets, expect):
        sentinel, dtype, nbytes, data_off = struct.unpack_from("<IIQQ", data, off)
        assert (sentinel, dtype, nbytes, data_off) == (0xDEADBEEF, code, size, off + 64)
        assert off % 64 == 0 and data_off % 64 == 0
        assert data[data_off:data_off + size] == arr.tobytes()
    assert len(data) % 64 == 0
    recs = blob_records(data)
    assert [r["offset"] for r in recs] == offsets
    assert [r["dtype"] for r in recs] == ["fp16", "fp32", "int8"]
    back = unpack_weights(data)
    for x, y in zip(back, [a, b, c]):
        np.testing.assert_array_equal(x, y.reshape(-1))


def test_dtype_conversion_and_errors():
    w = np.linspace(-1, 1, 7).astype(np.float32)
    data, _ = pack_weights([w], dtype="fp16")
    np.testing.assert_array_equal(unpack_weights(data)[0], w.astype(np.float16))
    with pytest.raises(TypeError, match="float64"):
        pack_weights([np.zeros(3)])
    with pytest.raises(ValueError, match="dtype"):
        pack_weights([w], dtype="bf16")


def test_empty_list_is_a_valid_file():
    data, offsets = pack_weights([])
    assert offsets == [] and data == struct.pack("<II", 0, 2) + bytes(56)


@pytest.mark.parametrize("corrupt", ["sentinel", "size", "version", "truncate"])
def test_reader_rejects_malformed_files(corrupt):
    data = bytearray(pack_weights([np.ones(8, np.float16)])[0])
    if corrupt == "sentinel":
        data[64] ^= 0xFF
    elif corrupt == "size":
        struct.pack_into("<Q", data, 72, 1 << 40)
    elif corrupt == "version":
        struct.pack_into("<I", data, 4, 1)
    else:
        data = data[:100]
    with pytest.raises(ValueError):
        blob_records(bytes(data))
