"""What the user is told: our ``logging`` records as "[SSD-1B] …" console lines, and toasts in the web UI.

A1111 configures ``logging`` only when started with ``--loglevel`` (or ``SD_WEBUI_LOG_LEVEL``); without
it an INFO record would reach no handler at all.  :func:`install_console` therefore gives the
package's logger its own handler, which prints where A1111 users look (stdout, next to the host's
own prints).  Records still propagate, so a logging setup of the host or the user sees them too.
"""

from __future__ import annotations

import logging
import sys

PREFIX = "[SSD-1B]"
PACKAGE_LOGGER = __name__.split(".")[0]  # "extensions_ssd1b": every module's logger is below it
HANDLER_NAME = "ssd1b-console"


class ConsoleHandler(logging.Handler):
    """One "[SSD-1B] message" line per record on stdout, repeats included (two loads, two lines).

    ``sys.stdout`` is looked up per record: the host redirects it.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.set_name(HANDLER_NAME)
        self.setFormatter(logging.Formatter(f"{PREFIX} %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def install_console() -> None:
    """Print the package's INFO and higher records on the console (idempotent: one handler, ever)."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    if not any(handler.get_name() == HANDLER_NAME for handler in logger.handlers):
        logger.addHandler(ConsoleHandler())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def toast(message: str | None) -> None:
    """A toast in the web UI (gradio's Warning, from inside an event); nothing for API calls."""
    if not message:
        return
    try:
        import gradio
    except ImportError:
        return
    warning = getattr(gradio, "Warning", None)
    if warning is not None:
        import warnings

        with warnings.catch_warnings():  # outside a gradio event it would be a Python warning
            warnings.simplefilter("ignore")
            warning(f"SSD-1B: {message}")
