import json
import os

from modules import _standin, errors


def activate(p, extra_network_data):
    """no extra networks (LoRA, hypernetworks) in the stand-in"""


def _read_user_metadata(filename, exists):
    if filename is None:
        return {}

    basename, _ext = os.path.splitext(filename)
    metadata_filename = basename + '.json'

    metadata = {}
    try:
        if exists(metadata_filename):
            with open(metadata_filename, encoding="utf8") as file:
                metadata = json.load(file)
    except Exception as e:
        errors.display(e, f"reading extra network user metadata from {metadata_filename}")

    return metadata


if _standin.at_least("1.8.0"):
    def get_user_metadata(filename, lister=None):
        return _read_user_metadata(filename, lister.exists if lister else os.path.exists)
else:
    def get_user_metadata(filename):
        return _read_user_metadata(filename, os.path.isfile)
