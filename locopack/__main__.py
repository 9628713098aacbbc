"""``python -m locopack``: the command line (also what ``accelerate launch -m locopack`` runs)."""

from .cli import main

main()
