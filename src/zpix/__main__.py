"""`python -m zpix`: the same as the `zpix` command."""

from zpix.cli import main

main()
