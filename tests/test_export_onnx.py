"""module.export_onnx / export_program: the exported policy step run in ONNX Runtime against the
module itself (forward_inference / compute_values, i.e. the fused path where it runs).

Deterministic exports: every output equal within float32 tolerance, at B=1 and B=7 on one file.
Exploring exports: actions in distribution (chi-square / KS on one fixed observation) and
``action_logp`` exactly the module's distribution's logp of each sampled action.
"""
import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
stats = pytest.importorskip("scipy.stats")

import rlmodule_fast as rf  # noqa: E402
from rlmodule_fast.export import PolicyStep  # noqa: E402

ACTS = {
    "disc": gym.spaces.Discrete(4),
    "multi": gym.spaces.MultiDiscrete([3, 2]),
    "box": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
}
OBS = {
    "box": gym.spaces.Box(-2.0, 2.0, (2, 3), np.float32),  # rank 2: flattened in the graph
    "disc": gym.spaces.Discrete(5),                        # one-hot in the graph
}
MODELS = {
    "mlp": {"fcnet_hiddens": [16, 16]},
    "lstm": {"fcnet_hiddens": [8], "use_lstm": True, "lstm_cell_size": 8},
    "gru": {"fcnet_hiddens": [8], "use_gru": True, "lstm_cell_size": 8},
}


def build(act: str, obs: str, model: str, shared: bool = True, seed: int = 0, **extra):
    torch.manual_seed(seed)
    cfg = {**MODELS[model], "vf_share_layers": shared, **extra}
    return rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=OBS[obs],
                           action_space=ACTS[act], model_config_dict=cfg, catalog_class=rf.ppo.PPOCatalog).build()


def sample_obs(space, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=n).astype(np.int64)
    return rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(np.float32)


def random_state(module, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)

    def one(s):
        return {k: (one(v) if isinstance(v, dict) else torch.randn(n, 1, v.shape[-1], generator=g) * 0.5)
                for k, v in s.items()}
    return one(module.get_initial_state())


def flat_state(state: dict, prefix: str) -> dict:
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out.update(flat_state(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = np.asarray(v)
    return out


def module_outputs(module, obs: np.ndarray, state: dict, explore: bool = False) -> dict:
    """The module's own step: outputs keyed as in the ONNX graph."""
    batch = {"obs": torch.as_tensor(obs)}
    if state:
        batch["state_in"] = state
    fwd = module.forward_exploration if explore else module.forward_inference
    with torch.no_grad():
        out = fwd(batch)
        res = {k: out[k].numpy() for k in ("actions", "action_logp", "action_dist_inputs")}
        if getattr(module, "vf", None) is not None and not module.inference_only:
            res["vf_preds"] = module.compute_values(batch).numpy()
    if state:
        res.update(flat_state(out["state_out"], "state_out."))
    return res


def run_onnx(sess, obs: np.ndarray, state: dict) -> dict:
    feeds = {"obs": obs, **flat_state(state, "state_in.")}
    feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


CASES = [(a, m, s) for a in ACTS for m in MODELS for s in (True, False)]


@pytest.mark.parametrize("act,model,shared", CASES,
                         ids=[f"{a}-{m}-{'shared' if s else 'separate'}" for a, m, s in CASES])
def test_inference_export_matches_module(tmp_path, act, model, shared):
    obs_kind = "disc" if (list(ACTS).index(act) + list(MODELS).index(model) + shared) % 2 else "box"
    module = build(act, obs_kind, model, shared)
    path = module.export_onnx(tmp_path / "policy.onnx")
    sess = session(path)
    step = PolicyStep(module)
    assert [i.name for i in sess.get_inputs()] == step.input_names
    assert [o.name for o in sess.get_outputs()] == step.output_names
    if model == "mlp":
        assert step.input_names == ["obs"]
    elif shared:
        assert step.input_names == ["obs", "state_in.h"] + (["state_in.c"] if model == "lstm" else [])
    else:
        assert "state_in.actor.h" in step.input_names and "state_in.critic.h" in step.input_names
    assert "vf_preds" in step.output_names
    for B in (1, 7):  # one file, dynamic batch
        obs = sample_obs(OBS[obs_kind], B, seed=B)
        state = random_state(module, B, seed=B)
        got = run_onnx(sess, obs, state)
        want = module_outputs(module, obs, state)
        assert set(got) == set(want)
        for k, w in want.items():
            g = got[k]
            assert g.shape == w.shape, (k, g.shape, w.shape)
            if k == "actions" and act != "box":
                assert g.dtype == np.int64
                np.testing.assert_array_equal(g, w, err_msg=k)
            else:
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=k)


EXPLORE = [(a, m) for a in ACTS for m in ("mlp", "lstm")]


@pytest.mark.parametrize("act,model", EXPLORE, ids=[f"{a}-{m}" for a, m in EXPLORE])
def test_explore_export_samples_the_module_distribution(tmp_path, act, model):
    obs_kind = "box" if model == "mlp" else "disc"
    module = build(act, obs_kind, model, shared=model == "mlp", seed=3)
    path = module.export_onnx(tmp_path / "explore.onnx", explore=True)
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert ("RandomNormalLike" if act == "box" else "RandomUniformLike") in ops
    sess = session(path)
    N = 4000  # one fixed observation (and state) repeated: N draws from one distribution
    obs = np.repeat(sample_obs(OBS[obs_kind], 1, seed=11), N, axis=0)
    state = {k: v.expand(N, *v.shape[1:]) if not isinstance(v, dict) else
             {kk: vv.expand(N, *vv.shape[1:]) for kk, vv in v.items()}
             for k, v in random_state(module, 1, seed=11).items()}
    got = run_onnx(sess, obs, state)
    want = module_outputs(module, obs[:2], {k: (v[:2] if not isinstance(v, dict) else {kk: vv[:2] for kk, vv in v.items()})
                                            for k, v in state.items()}, explore=True)
    # The deterministic outputs still equal the module's.
    for k in want:
        if k not in ("actions", "action_logp"):
            np.testing.assert_allclose(got[k][:2], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    adi = torch.from_numpy(got["action_dist_inputs"][:1])
    dist = module.get_exploration_action_dist_cls().from_logits(torch.from_numpy(got["action_dist_inputs"]))
    # logp: exactly the module's distribution's logp of each action the graph drew.
    np.testing.assert_allclose(got["action_logp"], dist.logp(torch.from_numpy(got["actions"])).numpy(),
                               rtol=1e-5, atol=1e-5)
    acts = got["actions"]
    if act == "box":
        mean, log_std = adi[0].chunk(2)
        z = (acts - mean.numpy()) / np.exp(log_std.numpy())
        for d in range(z.shape[1]):
            assert stats.kstest(z[:, d], "norm").pvalue > 1e-4
    else:
        sizes = [ACTS[act].n] if act == "disc" else list(ACTS[act].nvec)
        cols = acts[:, None] if act == "disc" else acts
        for j, part in enumerate(torch.split(adi[0], sizes)):
            p = torch.softmax(part, -1).numpy().astype(np.float64)
            counts = np.bincount(cols[:, j], minlength=len(p))
            assert stats.chisquare(counts, p / p.sum() * N).pvalue > 1e-4
    again = run_onnx(sess, obs, state)["actions"]
    assert not np.array_equal(again, acts), "every run should draw fresh noise"


def test_fixed_batch_and_bad_arguments(tmp_path):
    module = build("disc", "box", "mlp")
    path = module.export_onnx(tmp_path / "b3.onnx", batch=3)
    sess = session(path)
    assert sess.get_inputs()[0].shape == [3, 2, 3]
    obs = sample_obs(OBS["box"], 3, seed=0)
    np.testing.assert_allclose(run_onnx(sess, obs, {})["action_dist_inputs"],
                               module_outputs(module, obs, {})["action_dist_inputs"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch"):
        module.export_onnx(tmp_path / "x.onnx", batch=0)
    with pytest.raises(ValueError, match="explore"):
        module.export_onnx(tmp_path / "x.onnx", explore="yes")


def test_inference_only_module_has_no_value_output(tmp_path):
    torch.manual_seed(0)
    module = rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=OBS["box"],
                             action_space=ACTS["box"], model_config_dict={"fcnet_hiddens": [8], "vf_share_layers": False},
                             catalog_class=rf.ppo.PPOCatalog, inference_only=True).build()
    with pytest.raises(ValueError, match="with_value"):
        PolicyStep(module, with_value=True)
    sess = session(module.export_onnx(tmp_path / "p.onnx"))
    assert [o.name for o in sess.get_outputs()] == ["actions", "action_logp", "action_dist_inputs"]
    obs = sample_obs(OBS["box"], 5, seed=1)
    got, want = run_onnx(sess, obs, {}), module_outputs(module, obs, {})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_checkpoint_round_trip_then_export(tmp_path):
    module = build("multi", "box", "lstm", shared=False, seed=5)
    ckpt = module.save_to_path(tmp_path / "ckpt")
    restored = rf.RLModule.from_checkpoint(ckpt)
    sess = session(restored.export_onnx(tmp_path / "restored.onnx"))
    obs = sample_obs(OBS["box"], 7, seed=2)
    state = random_state(module, 7, seed=2)
    got, want = run_onnx(sess, obs, state), module_outputs(module, obs, state)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("model", ["mlp", "gru"])
def test_export_program_matches_module(model):
    module = build("box", "box", model, seed=2)
    prog = module.export_program()
    assert isinstance(prog, torch.export.ExportedProgram)
    step = PolicyStep(module)
    for B in (1, 5):
        obs = sample_obs(OBS["box"], B, seed=B)
        state = random_state(module, B, seed=B)
        states = [torch.as_tensor(v) for v in flat_state(state, "").values()]
        out = prog.module()(torch.from_numpy(obs), *states)
        want = module_outputs(module, obs, state)
        for name, t in zip(step.output_names, out):
            np.testing.assert_allclose(t.detach().numpy(), want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_cli_export_from_checkpoint(tmp_path, capsys):
    from rlmodule_fast.cli import main

    module = build("disc", "box", "gru", shared=False, seed=4)
    ckpt = module.save_to_path(tmp_path / "ckpt")
    out = tmp_path / "policy.onnx"
    assert main(["export", str(ckpt), str(out), "--explore"]) == 0
    printed = capsys.readouterr().out
    assert "verified in ONNX Runtime" in printed and "state_out.critic.h" in printed
    sess = session(out)
    assert [i.name for i in sess.get_inputs()] == ["obs", "state_in.actor.h", "state_in.critic.h"]
    obs = sample_obs(OBS["box"], 7, seed=3)
    state = random_state(module, 7, seed=3)
    got, want = run_onnx(sess, obs, state), module_outputs(module, obs, state)
    for k in ("action_dist_inputs", "vf_preds", "state_out.actor.h", "state_out.critic.h"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    # errors name what is wrong, exit status 2
    assert main(["export", str(tmp_path / "missing"), str(out)]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["export", str(ckpt), str(tmp_path / "no" / "dir" / "p.onnx")]) == 2
    assert "out:" in capsys.readouterr().err
    assert main(["export", str(ckpt), str(out), "--module-id", "x"]) == 2


def test_console_script_entry_point_resolves():
    import importlib
    import pathlib

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    target = meta["project"]["scripts"]["rlmodule-fast"]
    mod, fn = target.split(":")
    assert getattr(importlib.import_module(mod), fn) is __import__("rlmodule_fast.cli", fromlist=["main"]).main
    with pytest.raises(SystemExit):  # argparse: a missing argument
        __import__("rlmodule_fast.cli", fromlist=["main"]).main(["export"])


def test_readme_deploy_snippets_run(tmp_path, monkeypatch, capsys):
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    for code in blocks[:2]:  # export, then serve with onnxruntime + numpy only
        exec(compile(code, "README.md:Deploy", "exec"), {"__name__": "__readme__"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines[-3:]] == ["0", "1", "2"]
    torch._dynamo.reset()
    exec(compile(blocks[2], "README.md:Deploy/torch.compile", "exec"), {"__name__": "__readme__"})
    assert "torch.Size([64, 4])" in capsys.readouterr().out


def test_bench_ort_exported_provider_runs_the_exported_step():
    from rlmodule_fast.bench.ort import ExportedPolicy

    module = build("box", "box", "lstm", shared=False, seed=6)
    obs = sample_obs(OBS["box"], 3, seed=4)
    state = {k: {kk: vv.numpy() for kk, vv in v.items()} for k, v in random_state(module, 3, seed=4).items()}
    p = ExportedPolicy(module, obs, state, threads=1)
    assert p.state_names == ["actor.h", "actor.c", "critic.h", "critic.c"]
    assert p.max_abs_diff < 1e-5
    out = dict(zip(p.out_names, p.step(*p.args)))
    assert "vf_preds" not in out and out["actions"].shape == (3, 2)
    want = module_outputs(module, obs, {k: {kk: torch.from_numpy(vv) for kk, vv in v.items()} for k, v in state.items()})
    np.testing.assert_allclose(out["state_out.critic.c"], want["state_out.critic.c"], rtol=1e-5, atol=1e-5)


def test_export_traces_torch_ops_even_when_training_runs_on_triton(tmp_path, monkeypatch):
    monkeypatch.setenv("RLMODULE_FAST_TRAIN_BACKEND", "triton")  # forward_train's MLPs on Triton (interpreted)
    module = build("disc", "box", "mlp", seed=9)
    sess = session(module.export_onnx(tmp_path / "p.onnx"))
    assert not any("triton" in n.op_type.lower() or n.domain not in ("", "ai.onnx")
                   for n in __import__("onnx").load(str(tmp_path / "p.onnx")).graph.node)
    obs = sample_obs(OBS["box"], 4, seed=5)
    got, want = run_onnx(sess, obs, {}), module_outputs(module, obs, {})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


VARIANTS = {
    "free_log_std-silu-head": ("box", {"free_log_std": True, "fcnet_activation": "silu", "head_fcnet_hiddens": [8]}),
    "elu-relu-head-separate": ("multi", {"fcnet_activation": "elu", "head_fcnet_hiddens": [8, 4],
                                         "vf_share_layers": False}),
    "linear-clip": ("box", {"fcnet_activation": "linear", "log_std_clip_param": 0.5}),
    "layernorm": ("disc", {"fcnet_use_layernorm": True, "head_fcnet_use_layernorm": True, "head_fcnet_hiddens": [8],
                           "vf_share_layers": False}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_model_config_variants(tmp_path, variant):
    act, extra = VARIANTS[variant]
    module = build(act, "box", "mlp", seed=7, **extra)
    sess = session(module.export_onnx(tmp_path / "v.onnx"))
    for B in (1, 6):
        obs = sample_obs(OBS["box"], B, seed=B + 20) * 3  # outside the space too: large log-stds get clipped
        got, want = run_onnx(sess, obs, {}), module_outputs(module, obs, {})
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


class MaskedModule(rf.TorchRLModule):
    """A user module in RLlib's action-masking style (Dict obs, RLlib >= 2.40 ``_forward``): the
    exporter runs its ``_forward_train`` (the generic path) with one graph input per obs key."""

    def setup(self):
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))

    def _forward(self, batch, **kwargs):
        obs = batch["obs"]
        logits = self.net(obs["observations"])
        return {"action_dist_inputs": logits + torch.clamp(torch.log(obs["action_mask"]), min=-3.4e38)}


@pytest.mark.parametrize("explore", [False, True])
def test_dict_observations_and_the_generic_forward(tmp_path, explore):
    torch.manual_seed(1)
    space = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (4,), np.float32),
                             "observations": gym.spaces.Box(-1.0, 1.0, (3,), np.float32)})
    module = MaskedModule(observation_space=space, action_space=gym.spaces.Discrete(4), model_config={})
    sess = session(module.export_onnx(tmp_path / "m.onnx", explore=explore))
    assert [i.name for i in sess.get_inputs()] == ["obs.action_mask", "obs.observations"]
    assert [o.name for o in sess.get_outputs()] == ["actions", "action_logp", "action_dist_inputs"]
    N = 2000 if explore else 7
    rng = np.random.default_rng(0)
    mask = np.ones((N, 4), np.float32)
    mask[:, 1] = 0.0
    mask[::2, 3] = 0.0
    x = rng.uniform(-1, 1, (N, 3)).astype(np.float32)
    got = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {"obs.action_mask": mask, "obs.observations": x})))
    with torch.no_grad():
        want = module.forward_inference({"obs": {"action_mask": torch.from_numpy(mask),
                                                 "observations": torch.from_numpy(x)}})
    np.testing.assert_allclose(got["action_dist_inputs"], want["action_dist_inputs"].numpy(), rtol=1e-5, atol=1e-5)
    a = got["actions"]
    assert not np.any(a == 1) and not np.any(a[::2] == 3)  # masked actions are never taken
    if not explore:
        np.testing.assert_array_equal(a, want["action_dist_inputs"].argmax(-1).numpy())
    else:
        assert len(np.unique(a[1::2])) == 3  # the three allowed actions all occur
    np.testing.assert_allclose(got["action_logp"], rf.distributions.TorchCategorical.from_logits(
        torch.from_numpy(got["action_dist_inputs"])).logp(torch.from_numpy(a)).numpy(), rtol=1e-5, atol=1e-5)


def test_cnn_module_with_uint8_frames(tmp_path):
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (10, 10, 3), np.uint8)
    module = rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=space,
                             action_space=ACTS["disc"], catalog_class=rf.ppo.PPOCatalog,
                             model_config_dict={"conv_filters": [[4, [3, 3], 2], [8, [3, 3], 2]],
                                                "fcnet_hiddens": [16]}).build()
    sess = session(module.export_onnx(tmp_path / "cnn.onnx"))
    assert sess.get_inputs()[0].type == "tensor(uint8)"  # the cast to float is in the graph
    rng = np.random.default_rng(0)
    for B in (1, 5):
        obs = rng.integers(0, 256, (B, 10, 10, 3), dtype=np.uint8)
        got, want = run_onnx(sess, obs, {}), module_outputs(module, obs, {})
        np.testing.assert_array_equal(got["actions"], want["actions"])
        for k in ("action_logp", "action_dist_inputs", "vf_preds"):  # inputs up to 255: float32 sums of ~10^4
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("model", ["mlp", "lstm"])
def test_action_masking_ppo_module(tmp_path, model):
    torch.manual_seed(0)
    space = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (4,), np.float32),
                             "observations": gym.spaces.Box(-1.0, 1.0, (3,), np.float32)})
    module = rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=space,
                             action_space=ACTS["disc"], model_config_dict=MODELS[model],
                             catalog_class=rf.ppo.PPOCatalog).build()
    sess = session(module.export_onnx(tmp_path / "masked.onnx", explore=True))
    N = 2000
    mask = np.ones((N, 4), np.float32)
    mask[:, 1] = 0.0
    mask[::2, 3] = 0.0
    x = np.random.default_rng(0).uniform(-1, 1, (N, 3)).astype(np.float32)
    state = random_state(module, N, seed=1)
    feeds = {"obs.action_mask": mask, "obs.observations": x, **flat_state(state, "state_in.")}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    batch = {"obs": {"action_mask": torch.from_numpy(mask), "observations": torch.from_numpy(x)}}
    if state:
        batch["state_in"] = state
    with torch.no_grad():
        want = module.forward_inference(batch)
    np.testing.assert_allclose(got["action_dist_inputs"], want["action_dist_inputs"].numpy(), rtol=1e-5, atol=1e-5)
    a = got["actions"]
    assert not np.any(a == 1) and not np.any(a[::2] == 3)  # masked actions are never sampled
    assert set(np.unique(a[1::2])) == {0, 2, 3}
    dist = module.get_exploration_action_dist_cls().from_logits(torch.from_numpy(got["action_dist_inputs"]))
    np.testing.assert_allclose(got["action_logp"], dist.logp(torch.from_numpy(a)).numpy(), rtol=1e-5, atol=1e-5)


def test_appo_module(tmp_path):
    torch.manual_seed(0)
    module = rf.RLModuleSpec(module_class=rf.appo.APPOTorchRLModule, observation_space=OBS["box"],
                             action_space=ACTS["box"], model_config_dict=MODELS["mlp"]).build()
    sess = session(module.export_onnx(tmp_path / "appo.onnx"))
    obs = sample_obs(OBS["box"], 4, seed=3)
    got, want = run_onnx(sess, obs, {}), module_outputs(module, obs, {})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
