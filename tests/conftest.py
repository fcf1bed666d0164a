import os
import warnings

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


def _have_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_runtest_setup(item):
    # tests marked torch compare against PyTorch (an optional test extra): only they skip without it
    if item.get_closest_marker("torch") is not None and not _have_torch():
        pytest.skip("needs PyTorch, the reference it compares against (pip install torch)")


# tests/test_ane.py is owned by another change: its slow tests are marked here by name so that
# `pytest -m "not slow"` leaves them out, and its needs_ane tests get the `ane` marker (move both
# into that file when it is free).
SLOW_IN_TEST_ANE = {"test_objc_check_passes", "test_portable_cpp_checks"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so `-m "not slow"` sees these marks
def pytest_collection_modifyitems(config, items):
    ane = [item for item in items if item.path.name == "test_ane.py"]
    needs_ane = getattr(ane[0].module, "needs_ane", None) if ane else None
    for item in ane:
        if item.originalname in SLOW_IN_TEST_ANE:
            item.add_marker(pytest.mark.slow)
        # its needs_ane skip is the `ane` marker's meaning: carry the marker too, so -m ane selects them
        if needs_ane is not None and needs_ane.mark in item.iter_markers():
            item.add_marker(pytest.mark.ane)
    gone = sorted(name for name in SLOW_IN_TEST_ANE if ane and not hasattr(ane[0].module, name))
    if gone:
        warnings.warn(pytest.PytestWarning(f"conftest.py marks {gone} in test_ane.py slow, but it has no such test"))
