"""The ANE runtime's model directories (portable: driven on every platform with a temporary root)."""
import os
import subprocess
import sys

import pytest

from anetrain import _native, ane

HEX = ["0a1b2c3d4e5f", "deadbeef00", "ABCDEF_0123"]


@pytest.fixture(autouse=True)
def nothing_left_registered():
    yield
    _native.ane_release_models()


def registry_of(root, pid):
    return root / f"{_native.ane_model_registry_prefix}{pid}.txt"


def make_dir(root, name, files=("model.mil", "weights/w.bin")):
    d = root / name
    for f in files:
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        (d / f).write_bytes(b"x")
    return d


def dead_pid():
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_registry(root, pid, paths):
    registry_of(root, pid).write_text("".join(f"{p}\n" for p in paths))


def test_registry_prefix_and_file():
    assert _native.ane_model_registry_prefix == "anetrain-models-"
    assert _native.ane_model_registry_file("/tmp/x/") == f"/tmp/x/anetrain-models-{os.getpid()}.txt"


def test_registration_lists_dirs_in_this_process_registry(tmp_path):
    dirs = [str(make_dir(tmp_path, h)) for h in HEX[:2]]
    for d in dirs:
        _native.ane_model_dirs_register(str(tmp_path), d)
    registry = registry_of(tmp_path, os.getpid())
    assert registry.read_text().splitlines() == sorted(dirs)
    assert _native.ane_model_registry_file(str(tmp_path)) == str(registry)
    assert _native.ane_model_dirs_unregister(dirs[0]) is True
    assert not os.path.exists(dirs[0])
    assert registry.read_text().splitlines() == [dirs[1]]
    assert _native.ane_model_dirs_unregister(dirs[1]) is True
    assert not registry.exists()  # an empty list leaves no file behind


def test_shared_dirs_are_removed_by_the_last_user_only(tmp_path):
    d = str(make_dir(tmp_path, HEX[0]))
    for _ in range(3):
        _native.ane_model_dirs_register(str(tmp_path), d)
    assert _native.ane_model_dirs_users(d) == 3
    assert registry_of(tmp_path, os.getpid()).read_text().splitlines() == [d]  # listed once
    assert _native.ane_model_dirs_unregister(d) is False
    assert _native.ane_model_dirs_unregister(d) is False
    assert os.path.isdir(d)
    assert _native.ane_model_dirs_unregister(d) is True
    assert not os.path.exists(d) and _native.ane_model_dirs_users(d) == 0
    assert _native.ane_model_dirs_unregister(d) is False  # no longer known


def test_remove_model_dir_only_removes_registered_dirs(tmp_path):
    mine, other = str(make_dir(tmp_path, HEX[0])), str(make_dir(tmp_path, HEX[1]))
    _native.ane_model_dirs_register(str(tmp_path), mine)
    _native.ane_model_dirs_register(str(tmp_path), mine)
    assert _native.ane_model_dirs_remove(other) is False and os.path.isdir(other)
    assert _native.ane_model_dirs_remove(mine) is True  # whatever the user count
    assert not os.path.exists(mine) and _native.ane_model_dirs_users(mine) == 0


@pytest.mark.parametrize("bad", ["{root}/../{hex}", "{root}/sub/{hex}", "{root}/not-hex", "{root}/model.mil",
                                 "/etc/{hex}", "{root}", "{root}/", "{root}/..", "relative/{hex}"])
def test_only_hex_children_of_the_root_can_be_registered(tmp_path, bad):
    path = bad.format(root=tmp_path, hex=HEX[0])
    with pytest.raises(ValueError, match="not a hex-id directory directly under"):
        _native.ane_model_dirs_register(str(tmp_path), path)
    assert not registry_of(tmp_path, os.getpid()).exists()


def test_release_all_clears_this_process_registry(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    dirs = [str(make_dir(a, HEX[0])), str(make_dir(a, HEX[1])), str(make_dir(b, HEX[2]))]
    for d in dirs:
        _native.ane_model_dirs_register(os.path.dirname(d), d)
    _native.ane_model_dirs_register(str(a), dirs[0])  # shared: released all the same
    removed = ane.release_models()
    registries = [str(registry_of(a, os.getpid())), str(registry_of(b, os.getpid()))]
    assert sorted(removed) == sorted(dirs + registries)
    assert not any(os.path.exists(p) for p in dirs + registries)
    assert all(_native.ane_model_dirs_users(d) == 0 for d in dirs)
    assert ane.release_models() == []


def test_sweep_removes_a_dead_process_dirs_and_registry(tmp_path):
    pid = dead_pid()
    dirs = [make_dir(tmp_path, h) for h in HEX]
    write_registry(tmp_path, pid, dirs)
    removed = _native.ane_model_dirs_sweep(str(tmp_path))
    assert sorted(removed) == sorted([str(d) for d in dirs] + [str(registry_of(tmp_path, pid))])
    assert list(tmp_path.iterdir()) == []


def test_sweep_leaves_live_processes_alone(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = make_dir(tmp_path, HEX[0])
        write_registry(tmp_path, live.pid, [kept])
        write_registry(tmp_path, 1, [make_dir(tmp_path, HEX[1])])  # pid 1 never dies
        assert _native.ane_model_dirs_sweep(str(tmp_path)) == []
        assert kept.is_dir() and (tmp_path / HEX[1]).is_dir()
        assert registry_of(tmp_path, live.pid).exists() and registry_of(tmp_path, 1).exists()
    finally:
        live.kill()
        live.wait()


def test_sweep_never_removes_a_dir_a_live_process_lists(tmp_path):
    shared = make_dir(tmp_path, HEX[0])
    write_registry(tmp_path, dead_pid(), [shared])
    _native.ane_model_dirs_register(str(tmp_path), str(shared))  # this process uses it too
    removed = _native.ane_model_dirs_sweep(str(tmp_path))
    assert shared.is_dir() and str(shared) not in removed
    write_registry(tmp_path, 1, [make_dir(tmp_path, HEX[1])])
    write_registry(tmp_path, dead_pid(), [tmp_path / HEX[1]])
    _native.ane_model_dirs_sweep(str(tmp_path))
    assert (tmp_path / HEX[1]).is_dir()


def test_sweep_touches_nothing_unlisted_or_outside_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    unlisted = make_dir(root, HEX[0])
    stray_file = root / "notes.txt"
    stray_file.write_text("keep")
    out_dir = make_dir(outside, HEX[1])
    nested = make_dir(root / HEX[2], "abcdef")  # a hex dir, but not a direct child
    not_hex = make_dir(root, "important")
    listed_file = root / "deadbeef"
    listed_file.write_text("a file, not a directory")
    link = root / "cafe0123"
    link.symlink_to(out_dir)  # a hex-named link to a directory elsewhere
    other_registry = root / "anetrain-models-abc.txt"
    other_registry.write_text(f"{not_hex}\n")
    pid = dead_pid()
    write_registry(root, pid, [out_dir, f"{root}/../outside/{HEX[1]}", f"{root}/{HEX[2]}/../{HEX[1]}", nested,
                               not_hex, listed_file, link, "/", root, f"{root}/"])
    removed = _native.ane_model_dirs_sweep(str(root))
    assert removed == [str(registry_of(root, pid))]
    for p in (unlisted, stray_file, out_dir / "model.mil", nested / "model.mil", not_hex, listed_file, other_registry):
        assert p.exists(), p
    assert link.is_symlink()


def test_sweep_of_a_missing_root_is_empty(tmp_path):
    assert _native.ane_model_dirs_sweep(str(tmp_path / "absent")) == []
    assert _native.ane_model_dirs_sweep("relative/root") == []


@pytest.mark.skipif(ane.available(), reason="checks the answers off the ANE")
def test_probe_introspection_off_the_ane_answers_absent_or_says_why():
    # the probes and the self-test reach the runtime only through anetrain.ane
    assert ane.describe_class("_ANEClient") == {"exists": False, "class_methods": [], "instance_methods": [],
                                                "properties": []}
    assert ane.framework_classes() == [] and ane.class_answers("_ANEClient", "sharedConnection", True) is False
    assert ane.process_compiles() == 0
    for call in (lambda: ane.kernel_info(None), lambda: ane.reload_kernel(None),
                 lambda: ane.eval_variant(None, [], [])):
        with pytest.raises(RuntimeError, match="needs the ANE backend of a macOS build"):
            call()


def test_the_probe_scripts_use_the_public_api():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for script in ("probe.py", "selftest_ane.py", "bench_train.py"):
        with open(os.path.join(root, "scripts", script)) as f:
            assert "_native" not in f.read(), script
