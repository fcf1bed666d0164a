import os
import signal

import psutil

# pyproject's addopts run the suite on pytest-xdist workers (-n auto), which share the cores: idle
# OpenMP threads (PyTorch's, on the reference side of many tests and in the processes tests start)
# sleep instead of spinning on a core another worker needs. Read when libgomp loads, so set before
# any test module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Each worker gets its share of the cores for its threads (ours, numpy's BLAS, PyTorch's), and so do
# the processes its tests start, which inherit the environment: every worker running a
# cores-wide thread pool oversubscribes the machine, and the pools' waits spin on cores the other
# workers need. Set before numpy or anetrain loads; a count the user set wins. The threaded paths
# are tested on purpose, with explicit counts (test_model_training.py's thread-count test,
# test_ref_inputs.py).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (psutil.cpu_count(logical=False) or os.cpu_count() or 1)
                 // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("ANETRAIN_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))
# A shell without job control starts background commands with SIGINT ignored, and the processes
# the tests start would inherit that: the tests that press Ctrl-C (SIGINT) on a run would wait on a
# process that cannot hear it. The tests need the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import numpy as np  # noqa: E402  (after the thread counts: its BLAS reads them when it loads)
import pytest  # noqa: E402

# more workers would wait on the longest chain of tests (test_distributed's two_ranks group), and
# each holds its own PyTorch and transformers
MAX_WORKERS = 8


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


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """-n auto: one worker per physical core, at most MAX_WORKERS; PYTEST_XDIST_AUTO_NUM_WORKERS
    still decides when set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    return max(1, min(MAX_WORKERS, psutil.cpu_count(logical=False) or os.cpu_count() or 1))


SHARED_SCOPES = ("session", "package", "module", "class")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """On xdist workers (--dist loadgroup): the tests that use one module-scoped (or wider)
    fixture form a group that runs on one worker, so the fixture is built once, not once per
    worker; the tests of a real ANE keep to one worker, one after another, as they ran before the
    suite was parallel; and tests marked slow are handed out first, so the run does not end on a
    long test while the other workers idle."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        # ours only (pytest's tmp_path_factory, under every tmp_path, is session-scoped too)
        shared = sorted(name for name, defs in (info.name2fixturedefs.items() if info else ())
                        if defs and defs[-1].baseid and defs[-1].scope in SHARED_SCOPES)
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.nodeid.split('::')[0]}::{shared[0]}"))
        elif item.get_closest_marker("ane"):
            item.add_marker(pytest.mark.xdist_group("ane"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow ones first
