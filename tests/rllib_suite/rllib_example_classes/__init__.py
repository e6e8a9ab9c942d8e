"""RLlib 2.60's example RLModule classes (ray/rllib/examples/rl_modules/classes/), ported to
rlmodule_fast by changing import lines only; used by the ported RLlib tests beside this folder."""
