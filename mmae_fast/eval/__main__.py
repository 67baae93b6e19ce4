"""``python -m mmae_fast.eval`` = ``mmae-eval``."""
import sys

from .cli import main

sys.exit(main())
