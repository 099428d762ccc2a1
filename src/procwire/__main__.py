"""``python -m procwire`` is the ``procwire`` command."""
from procwire.cli import main

main()
