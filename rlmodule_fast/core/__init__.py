"""The RLModule contract (framework-agnostic where it can be)."""
