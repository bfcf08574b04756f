"""``python -m brevitas_apq.cli``: the ``apq`` command."""

from brevitas_apq.cli import main

main()
