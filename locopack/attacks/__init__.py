"""Attacks on an edited model: what brings an erased concept back."""
