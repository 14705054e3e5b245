"""`python -m animegen`: the same CLI, and what torchrun launches."""

from animegen.cli import main

raise SystemExit(main())
