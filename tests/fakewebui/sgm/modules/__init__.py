"""Stand-in for ``sgm.modules`` (the real one also exports ``GeneralConditioner``; not needed here)."""
