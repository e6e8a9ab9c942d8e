"""``rlmodule-fast``: command-line tools. One subcommand so far:

    rlmodule-fast export CHECKPOINT_DIR OUT.onnx [--explore] [--batch N] [--no-value]
                         [--module-id ID] [--rllib] [--no-verify]

reads a checkpoint written by ``module.save_to_path()`` (a MultiRLModule checkpoint: the module
``--module-id``; ``--rllib``: an RLlib PPO / APPO / DQN / SAC module or Algorithm checkpoint, read by
``rlmodule_fast.rllib.load_rllib_checkpoint``), writes its policy step as ONNX
(``rlmodule_fast.export.export_onnx``), then, when onnxruntime is installed, runs the file once
on example inputs against the module and prints the largest difference of each deterministic
output. Loading never runs code from the checkpoint. Exit status 0 on success, 1 when the
verification finds a difference, 2 on an error (bad arguments, an unreadable checkpoint, a
module the exporter cannot trace).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlmodule-fast", description="rlmodule_fast command-line tools")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a checkpoint's policy step as an ONNX model",
                       description="Write a checkpoint's policy step (encoder, heads, action selection, value "
                                   "head) as an ONNX model with a dynamic batch axis.")
    e.add_argument("checkpoint", help="checkpoint directory (module.save_to_path(), or RLlib's with --rllib)")
    e.add_argument("out", help="the .onnx file to write")
    e.add_argument("--explore", action="store_true",
                   help="sample actions in the graph (Gumbel-max / Gaussian noise from ONNX random ops) "
                        "instead of argmax / mean")
    e.add_argument("--batch", type=_positive_int, default=None, help="a fixed batch size (default: dynamic)")
    e.add_argument("--no-value", action="store_true", help="leave out the vf_preds output")
    e.add_argument("--module-id", default=None, help="the module of a multi-module checkpoint "
                                                     "(default: default_policy)")
    e.add_argument("--rllib", action="store_true", help="CHECKPOINT is an RLlib PPO / APPO / DQN / SAC module or Algorithm checkpoint")
    e.add_argument("--no-verify", action="store_true", help="skip running the file in ONNX Runtime")
    return p


def _load(args):
    import rlmodule_fast as rf

    module_id = args.module_id or rf.DEFAULT_MODULE_ID
    if args.rllib:
        from .rllib import load_rllib_checkpoint

        return load_rllib_checkpoint(args.checkpoint, module_id=module_id)
    module = rf.RLModule.from_checkpoint(args.checkpoint)
    if isinstance(module, rf.MultiRLModule):
        if module_id not in module:
            raise ValueError(f"--module-id: expected one of {sorted(module.keys())}, got {module_id!r}")
        module = module[module_id]
    elif args.module_id is not None:
        raise ValueError(f"--module-id: {args.checkpoint} holds a single {type(module).__name__}, not a MultiRLModule")
    return module


def verify(module, path: str, *, explore: bool, batch: Optional[int]) -> dict:
    """Runs ``path`` in ONNX Runtime on example inputs and returns {output: max |onnx - torch|}
    for the outputs that do not depend on random draws (all of them when not ``explore``),
    against ``PolicyStep`` (the module's torch layers) on the same inputs."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from .export import PolicyStep

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    step = PolicyStep(module, explore=explore, with_value="vf_preds" in names)
    if step.output_names != names:
        raise ValueError(f"{path}: outputs {names}, expected {step.output_names}")
    inputs = step.example_inputs(batch or 3)
    got = sess.run(None, {n: t.numpy() for n, t in zip(step.input_names, inputs)})
    with torch.no_grad():
        want = step(*inputs)
    random = {"actions", "action_logp"} if explore else set()
    return {n: float(np.max(np.abs(g.astype(np.float64) - w.numpy().astype(np.float64)), initial=0.0))
            for n, g, w in zip(names, got, want) if n not in random}


def _export(args) -> int:
    from .export import export_onnx

    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise ValueError(f"out: the directory {out_dir} does not exist")
    module = _load(args)
    # the module's own export_onnx where it has one: a subclass's refusals (DQN: explore=True) and its
    # forward registration (DQN's greedy step) live there; the bare function bypassed both
    export = getattr(module, "export_onnx", None)
    if not callable(export):
        def export(out, **kw):
            return export_onnx(module, out, **kw)
    path = export(args.out, explore=args.explore, batch=args.batch or "dynamic",
                  with_value=False if args.no_value else None)
    print(f"wrote {path} ({type(module).__name__}, explore={args.explore}, batch={args.batch or 'dynamic'})")
    if args.no_verify:
        return 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("not verified: onnxruntime is not installed (pip install onnxruntime)")
        return 0
    diffs = verify(module, path, explore=args.explore, batch=args.batch)
    worst = max(diffs.values(), default=0.0)
    print("verified in ONNX Runtime against the module: "
          + ", ".join(f"{k} max|diff| {v:.2g}" for k, v in diffs.items()))
    if worst > 1e-4:
        print(f"error: the exported model differs from the module by {worst:.3g}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _export(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"rlmodule-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
