"""Experiment drivers (ablation sets of Tables 10-12); run from the repository root."""
