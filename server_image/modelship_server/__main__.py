"""`python -m modelship_server` runs the server (same as `modelship-server`)."""

import sys

from .cli import main

sys.exit(main())
