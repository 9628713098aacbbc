"""Scoped, reversible interventions on a denoiser's text-conditioning sites."""
