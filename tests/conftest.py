import os

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_report_header(config):
    import anetrain

    i = anetrain.info()
    return (f"anetrain {i['version']}: {i['platform']}/{i['arch']} simd={i['simd']} blas={i['blas_core']} "
            f"backends={','.join(i['backends'])} OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")


def _have(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def pytest_runtest_setup(item):
    # tests marked torch or transformers compare against them (optional test extras): only they
    # skip without them
    if item.get_closest_marker("torch") is not None and not _have("torch"):
        pytest.skip("needs PyTorch, the reference it compares against (pip install torch)")
    if item.get_closest_marker("transformers") is not None and not _have("transformers"):
        pytest.skip("needs Hugging Face transformers, the reference it compares against (pip install transformers)")
