"""The Triton DQN step (kernels/qnet.py through fastpath.qnet_triton_plan) against the module's
torch layers, in Triton's interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1):
register-tile (widths <= 64) and staged (widths <= 256) variants, dueling and distributional,
masks, the epsilon-greedy distribution, errors and weight freshness. Small sizes: the
interpreter is slow. Tolerance: the kernels' "tf32x3" matmuls are float32-exact on CPU here;
rtol=atol=2e-5 on Q-values ~1.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.dqn import FLOAT_MIN, DQNTorchRLModule

TRI = rf.backend_info()["triton"]
pytestmark = [
    pytest.mark.skipif(not TRI["available"], reason=f"triton backend unavailable: {TRI['reason']}"),
    # numpy warnings from the interpreter on masked (padding) lanes, which are never stored
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]
BOX5 = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)


@pytest.fixture
def device(triton_device):  # conftest.triton_device
    return triton_device


def tol(device):
    return dict(rtol=2e-5, atol=2e-5) if device == "cpu" else dict(rtol=1e-4, atol=1e-4)


def build(device, obs_space=BOX5, n=3, **cfg):
    torch.manual_seed(0)
    return DQNTorchRLModule(observation_space=obs_space, action_space=gym.spaces.Discrete(n),
                            model_config={"epsilon": [(0, 1.0), (100, 0.1)], **cfg}).to(device)


def on(device, a):
    return torch.as_tensor(a, device=device)


CASES = {
    "regs-duel": dict(fcnet_hiddens=[17, 9], head_fcnet_hiddens=[7]),
    "regs-N5": dict(fcnet_hiddens=[13], num_atoms=5, dueling=False, v_min=-2.0, v_max=3.0),
    "staged-duel": dict(fcnet_hiddens=[70], head_fcnet_hiddens=[33]),
    "staged-duel-N4": dict(fcnet_hiddens=[80], num_atoms=4),
}


@pytest.mark.parametrize("B", [1, 37])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_greedy_equals_torch(case, B, device):
    m = build(device, **CASES[case])
    assert m.fast_path_info() == {"backend": "triton", "active": True, "reason": "RLMODULE_FAST_BACKEND=triton"}
    obs = on(device, np.random.default_rng(B).uniform(-1, 1, (B, 5)).astype(np.float32))
    out = m.forward_inference({"obs": obs})
    with torch.no_grad():
        q = m.compute_q_values({"obs": obs})["qf_preds"]
    torch.testing.assert_close(out["action_dist_inputs"], q, **tol(device))
    assert torch.equal(out["actions"], q.argmax(-1))
    want_logp = torch.log_softmax(q, -1).gather(1, q.argmax(-1, keepdim=True))[:, 0]
    torch.testing.assert_close(out["action_logp"], want_logp, **tol(device))


def test_triton_epsilon_greedy_distribution(device):
    m = build(device, n=4, fcnet_hiddens=[8], epsilon=0.4)
    obs = on(device, np.repeat(np.random.default_rng(0).uniform(-1, 1, (1, 5)).astype(np.float32), 800, axis=0))
    torch.manual_seed(3)
    acts = m.forward_exploration({"obs": obs})["actions"].cpu().numpy()
    g = int(m.forward_inference({"obs": obs[:1]})["actions"][0])
    p = np.full(4, 0.1)
    p[g] += 0.6
    counts = np.bincount(acts, minlength=4)
    assert float(((counts - p * len(acts)) ** 2 / (p * len(acts))).sum()) < 16.27  # 3 dof, p = 0.001
    torch.manual_seed(3)  # torch's seed reproduces the draws (row r's offsets do not depend on B)
    assert np.array_equal(m.forward_exploration({"obs": obs[:64]})["actions"].cpu().numpy(), acts[:64])


def test_triton_masks(device):
    space = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (5,), np.float32), "observations": BOX5})
    m = build(device, space, n=5, fcnet_hiddens=[12], epsilon=1.0)
    rng = np.random.default_rng(1)
    mask = (rng.random((64, 5)) < 0.5).astype(np.float32)
    mask[np.arange(64), rng.integers(0, 5, 64)] = 1
    observations = on(device, rng.uniform(-1, 1, (64, 5)).astype(np.float32))
    batch = {"obs": {"observations": observations, "action_mask": on(device, mask)}}
    for fwd in (m.forward_exploration, m.forward_inference):
        out = fwd(batch)
        assert (mask[np.arange(64), out["actions"].cpu().numpy()] == 1).all()
        assert (out["action_dist_inputs"].cpu().numpy()[mask == 0] == np.float32(FLOAT_MIN)).all()
    bad = mask.copy()
    bad[5] = 0
    with pytest.raises(ValueError, match=r"every action is masked \(row 5\)"):
        m.forward_inference({"obs": {"observations": observations, "action_mask": on(device, bad)}})


def test_triton_errors_and_freshness(device):
    m = build(device, fcnet_hiddens=[10])
    obs = np.random.default_rng(0).uniform(-1, 1, (6, 5)).astype(np.float32)
    obs[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 4\)"):
        m.forward_inference({"obs": on(device, obs)})
    obs[4, 0] = 0.0
    x = on(device, obs)
    m.forward_inference({"obs": x})
    with torch.no_grad():
        m.af.net.mlp[0].weight.mul_(-3.0)
        want = m.compute_q_values({"obs": x})["qf_preds"]
    torch.testing.assert_close(m.forward_inference({"obs": x})["action_dist_inputs"], want, **tol(device))


def test_triton_layernorm(device):
    """fcnet_use_layernorm (every encoder layer normed) in the Triton step, both variants."""
    for hiddens in ([12, 9], [70]):
        m = build(device, fcnet_hiddens=hiddens, fcnet_use_layernorm=True, head_fcnet_hiddens=[6])
        with torch.no_grad():
            for n in m.encoder.net.norms:
                n.weight.uniform_(0.5, 1.5)
                n.bias.uniform_(-0.3, 0.3)
        obs = on(device, np.random.default_rng(0).uniform(-1, 1, (7, 5)).astype(np.float32))
        out = m.forward_inference({"obs": obs})
        assert m.fast_path_info()["active"]
        with torch.no_grad():
            torch.testing.assert_close(out["action_dist_inputs"], m.compute_q_values({"obs": obs})["qf_preds"],
                                       **tol(device))


_SM90_SCRIPT = r"""
import json, os, re, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.backends.nvidia.compiler import get_ptxas
from rlmodule_fast.kernels import qnet

try:
    ptxas = get_ptxas(90).path
except TypeError:  # older triton: get_ptxas() without the arch
    ptxas = get_ptxas().path
T = {"dims_ptr": "*i32", "rng_ptr": "*i64", "flag_ptr": "*i32", "act_ptr": "*i64", "eps": "fp32"}
rows = []
# (staged, D, atoms, dueling): RLlib's default dueling net, a plain Q head, Rainbow's 51 atoms (2 actions)
for staged, D, natoms, dueling in ((False, 64, 1, True), (False, 64, 1, False), (True, 256, 1, True), (True, 256, 51, True)):
    fn = qnet._qnet_step_staged_fwd_kernel if staged else qnet._qnet_step_fwd_kernel
    NP = max(16, triton.next_power_of_2(2 * natoms)) if staged else D
    meta = dict(D=D, NATOMS=natoms)
    c = dict(N_ENC=2, AF0=2, N_AF_HID=0, AF_OUT=2, V0=3, N_VF_HID=0, VF_OUT=3, ENC_ACT=1, HEAD_ACT=2,
             NATOMS=natoms, DUELING=dueling and natoms == 1, HAS_MASK=True, EXPLORE=True, D=D, NP=NP,
             PRECISION="tf32x3", BLOCK_B=qnet.qnet_block_rows(meta, 4096, staged, NP), BN=min(64, D), BK=32,
             NORM_MASK=3, LN_W=2 * D + 2)  # fcnet_use_layernorm: both encoder layers normed
    sig = {n: ("constexpr" if n in c else T.get(n, "*fp32" if n.endswith("_ptr") else "i32")) for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, c), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    r = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    out = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    rows.append(dict(staged=staged, D=D, natoms=natoms, dueling=dueling, rc=r.returncode,
                     n_regs=int(regs.group(1)) if regs else None, spill_bytes=int(spill.group(1)) if spill else None,
                     log=out[-300:] if r.returncode else ""))
print("SPILLS-JSON", json.dumps(rows))
"""


@pytest.mark.slow
def test_qnet_kernels_compile_for_sm90_without_spills():
    """The interpreter never runs Triton's compiler: compile both DQN kernels (masked, exploring,
    layer-normed encoder; dueling, plain and 51-atom heads) for sm_90 without a GPU, in a subprocess without the
    interpreter, and check with triton's ptxas (-v) that none spills or exceeds 255 registers."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _SM90_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or "SPILLS-JSON" not in r.stdout:
        if "ptxas" in r.stderr and ("not found" in r.stderr or "No such file" in r.stderr):
            pytest.skip(f"compile for sm_90 unavailable: {r.stderr[-300:]}")
        raise AssertionError(r.stderr[-3000:])
    rows = json.loads(r.stdout.split("SPILLS-JSON", 1)[1])
    bad = [row for row in rows if row["rc"] != 0 or row["spill_bytes"] is None or row["spill_bytes"] > 0
           or row["n_regs"] > 255]
    assert len(rows) == 4 and not bad, bad
