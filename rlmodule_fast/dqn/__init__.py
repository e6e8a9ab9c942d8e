"""DQN / Rainbow: ``DQNCatalog`` and ``DQNTorchRLModule`` (RLlib 2.60's DefaultDQNTorchRLModule
names and outputs, epsilon-greedy step fused on the cpp backend)."""
from .dqn_catalog import DQN_DEFAULTS, DQNCatalog
from .dqn_rl_module import (
    ATOMS, FLOAT_MIN, QF_LOGITS, QF_NEXT_PREDS, QF_PREDS, QF_PROBS, QF_TARGET_NEXT_PREDS, QF_TARGET_NEXT_PROBS,
    DQNTorchRLModule,
)
from .schedule import EpsilonSchedule

__all__ = ["ATOMS", "DQNCatalog", "DQNTorchRLModule", "DQN_DEFAULTS", "EpsilonSchedule", "FLOAT_MIN", "QF_LOGITS",
           "QF_NEXT_PREDS", "QF_PREDS", "QF_PROBS", "QF_TARGET_NEXT_PREDS", "QF_TARGET_NEXT_PROBS"]
