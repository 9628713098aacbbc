"""``python -m locopack.cli``: the command line."""

from . import main

main()
