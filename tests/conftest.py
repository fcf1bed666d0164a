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
