"""A tiny stand-in for gradio 3.41: the components a settings page creates, as plain records.

Each component keeps every keyword it was given in ``kwargs`` (and as attributes), so a test can
check what an extension asked for.  Positional parameters follow gradio 3.41's signatures.
"""

from __future__ import annotations

from typing import Any

__version__ = "3.41.2"


class Component:
    """Base of the stand-in components: records its arguments, renders nothing."""

    def __init__(self, value: Any = None, **kwargs: Any) -> None:
        self.value = value
        self.kwargs = {"value": value, **kwargs}
        for key, item in kwargs.items():
            setattr(self, key, item)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kwargs!r})"


class Textbox(Component):
    def __init__(
        self,
        value: Any = "",
        lines: int = 1,
        max_lines: int = 20,
        placeholder: str | None = None,
        label: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(value, lines=lines, max_lines=max_lines, placeholder=placeholder, label=label, **kwargs)


class Number(Component):
    def __init__(
        self, value: Any = None, *, label: str | None = None, precision: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(value, label=label, precision=precision, **kwargs)


class Checkbox(Component):
    def __init__(self, value: Any = False, *, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(value, label=label, **kwargs)


class Slider(Component):
    def __init__(
        self,
        minimum: float = 0,
        maximum: float = 100,
        value: Any = None,
        *,
        step: float | None = None,
        label: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(value, minimum=minimum, maximum=maximum, step=step, label=label, **kwargs)


class Dropdown(Component):
    def __init__(
        self,
        choices: Any = None,
        *,
        value: Any = None,
        multiselect: bool | None = None,
        label: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(value, choices=choices, multiselect=multiselect, label=label, **kwargs)


class Radio(Component):
    def __init__(self, choices: Any = None, *, value: Any = None, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(value, choices=choices, label=label, **kwargs)


class HTML(Component):
    def __init__(self, value: Any = "", *, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(value, label=label, **kwargs)


def update(**kwargs: Any) -> dict[str, Any]:
    return {"__type__": "update", **kwargs}
