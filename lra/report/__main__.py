"""``python -m lra.report`` = ``lra-report``."""
import sys

from .cli import main

sys.exit(main())
