"""``python -m extensions_ssd1b inspect|verify|convert …`` (see :mod:`extensions_ssd1b.tools.cli`)."""

from .tools.cli import main

raise SystemExit(main())
