"""Hydra configuration of sweeps, installed as the package `sweeps.conf`."""
