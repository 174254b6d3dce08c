"""``python -m cnnlens`` runs the command line."""

import sys

from cnnlens.cli import main

sys.exit(main())
