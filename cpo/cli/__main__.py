"""`python -m cpo.cli`: the same as the `cpo` command."""

import sys

from cpo.cli import main

sys.exit(main())
