"""`python -m videopoet ...` runs the `videopoet` command."""

import sys

from videopoet.cli import main

sys.exit(main())
