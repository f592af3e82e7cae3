"""``python -m ftspl`` is the ``ftspl`` command."""

from ftspl.cli.main import main

main()
