"""Kept for old habits: the earlier manual prompt test is now `cpo try-prompts` (which fails when a check fails)."""

import sys

from cpo.cli import main

sys.exit(main(["try-prompts", *sys.argv[1:]]))
