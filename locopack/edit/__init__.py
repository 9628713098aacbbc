"""LocoEdit: closed-form key/value editing (and neuron-level editing) of localized sites."""

from .closed_form import EditSystem, normal_equation_residual, solve_delta
from .editor import collect_states, compute_delta, edit_errors, extra_rows

__all__ = [
    "EditSystem",
    "collect_states",
    "compute_delta",
    "edit_errors",
    "extra_rows",
    "normal_equation_residual",
    "solve_delta",
]
