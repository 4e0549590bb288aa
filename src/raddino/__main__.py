"""``python -m raddino`` runs the command-line interface."""

from raddino.cli.main import main

raise SystemExit(main())
