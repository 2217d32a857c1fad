"""Make the tiny test models of this folder importable as `models`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
