"""PyTorch and anetrain/torch_reference.py when PyTorch is installed, else None.

PyTorch is the reference the model tests compare against, never a runtime need. A test that uses
it carries @pytest.mark.torch, and conftest.py skips exactly those tests when PyTorch is missing,
so a file's other tests still run."""
try:
    import torch
except ImportError:
    torch = None

if torch is not None:
    from anetrain import torch_reference as torch_ref
else:
    torch_ref = None
