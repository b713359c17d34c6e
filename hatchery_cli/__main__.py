"""``python -m hatchery_cli``: the ``hatchery`` command without the installed console script."""

from hatchery_cli import main

main()
