"""``rf.ops.sample_categorical`` / ``sample_diag_gaussian`` pass ``check=False`` (the graph-safe,
no-host-sync call) to the triton backend, and refuse it for backends that have no such path."""
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ops import triton as tri

ok, why = tri.status()
DEVICES = [
    pytest.param("cpu", id="cpu-interpreter", marks=[pytest.mark.skipif(not ok, reason=why), pytest.mark.skipif(
        not tri.interpreted(), reason="CPU tensors need Triton's interpreter (TRITON_INTERPRET=1)")]),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device")]),
]
OPS = [("sample_categorical", 6, 1), ("sample_diag_gaussian", 6, 2)]


@pytest.fixture
def fresh():
    tri._rng_states.clear()
    tri._error_flags.clear()
    yield
    tri._rng_states.clear()
    tri._error_flags.clear()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, width, bit", OPS, ids=[o[0] for o in OPS])
def test_check_false_reaches_the_triton_backend(op, width, bit, device, fresh):
    fn = getattr(rf.ops, op)
    x = torch.zeros(8, width, device=device)
    c0 = int(tri.rng_state(device)[1])
    a1, _ = fn(x, backend="triton", check=False)
    a2, _ = fn(x, backend="triton", check=False)
    assert int(tri.rng_state(device)[1]) == c0 + 2  # drew from the persistent device stream
    assert not torch.equal(a1, a2)
    x[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):  # checked: raises at the call
        fn(x, backend="triton")
    fn(x, backend="triton", check=False)  # unchecked: the device flag instead
    assert tri.last_error(device) == bit
    with pytest.raises(ValueError, match="NaN or inf"):
        tri.raise_if_error(device)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("op, width, bit", OPS, ids=[o[0] for o in OPS])
def test_check_false_refused_where_no_graph_safe_path(op, width, bit, backend):
    with pytest.raises(ValueError, match=f"check=False: only the triton backend.*runs '{backend}'"):
        getattr(rf.ops, op)(torch.zeros(4, width), backend=backend, check=False)
    with pytest.raises(ValueError, match="check: expected a bool"):
        getattr(rf.ops, op)(torch.zeros(4, width), backend=backend, check="no")
