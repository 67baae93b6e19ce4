"""``python -m mmae_fast.train`` (and ``torchrun -m mmae_fast.train``)."""
import sys

from . import main

sys.exit(main())
