"""In-memory stand-in for A1111's cache.json (nothing is written to disk)."""

import os

from modules import _standin

_caches = {}
if _standin.at_least("1.9.0"):  # (a diskcache per subsection there; plain dicts here)
    caches = _caches


def dump_cache():
    pass


def cache(subsection):
    return _caches.setdefault(subsection, {})


def cached_data_for_file(subsection, title, filename, func):
    existing_cache = cache(subsection)
    ondisk_mtime = os.path.getmtime(filename)

    entry = existing_cache.get(title)
    if entry and ondisk_mtime <= entry.get("mtime", 0):
        return entry.get("value")

    value = func()
    if value is None:
        return None

    existing_cache[title] = {'mtime': ondisk_mtime, 'value': value}
    return value
