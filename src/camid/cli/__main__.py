"""``python -m camid.cli``: what ``train-all`` and ``predict`` launch for their queued jobs."""
import sys

from . import main

sys.exit(main())
