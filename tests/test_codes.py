"""One definition per code: ``_C``'s exported codes (csrc/common.h's enums) and the Python
mirror the Triton kernels read (``ops/codes.py``) must agree."""
import pytest

import rlmodule_fast as rf
from rlmodule_fast.ops import codes

CPP = rf.backend_info()["cpp"]


@pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")
@pytest.mark.parametrize("name", ["ACTIVATIONS", "DISTRIBUTIONS", "RNN_KINDS"])
def test_cpp_codes_equal_python_mirror(name):
    from rlmodule_fast import _C

    assert dict(getattr(_C, name)) == getattr(codes, name)


def test_every_reader_uses_the_one_definition():
    from rlmodule_fast.fastpath import layers
    from rlmodule_fast.ops import reference

    assert set(codes.ACTIVATIONS) == {reference.canonical_activation(a) for a in reference.ACTIVATIONS}
    assert set(layers.DIST_NAMES) == set(codes.DISTRIBUTIONS)
    if CPP["available"]:
        from rlmodule_fast.ops import cpp

        assert cpp.ACT_CODES == codes.ACTIVATIONS
    pytest.importorskip("triton")
    from rlmodule_fast.kernels import mlp, policy_step

    assert mlp.ACT_CODES is codes.ACTIVATIONS and policy_step.DIST_CODES is codes.DISTRIBUTIONS
