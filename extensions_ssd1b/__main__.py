"""``python -m extensions_ssd1b inspect|verify|convert …`` (see :mod:`extensions_ssd1b.cli`)."""

from .cli import main

raise SystemExit(main())
