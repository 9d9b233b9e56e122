"""Building the Settings page, as in A1111's modules/ui_settings.py (components only, no layout).

This is where a v1.6.0 host breaks on a 3-part section: ``elem_id, text = item.section``.
From v1.9.0 ``on_ui_settings`` callbacks run in ``register_settings`` (called by ``ui.create_ui``
before the other tabs); before that, at the start of ``create_ui``.
"""

from modules import _standin, script_callbacks, shared
from modules.shared import opts


def create_setting_component(key, is_quicksettings=False):
    def fun():
        return opts.data[key] if key in opts.data else opts.data_labels[key].default

    info = opts.data_labels[key]
    t = type(info.default)

    args = info.component_args() if callable(info.component_args) else info.component_args

    import gradio as gr

    if info.component is not None:
        comp = info.component
    elif t == str:
        comp = gr.Textbox
    elif t == int:
        comp = gr.Number
    elif t == bool:
        comp = gr.Checkbox
    else:
        raise Exception(f'bad options item type: {t} for key {key}')

    elem_id = f"setting_{key}"

    return comp(label=info.label, value=fun(), elem_id=elem_id, **(args or {}))


class UiSettings:
    components = None
    component_dict = None
    dummy_component = None

    if _standin.at_least("1.9.0"):
        def register_settings(self):
            script_callbacks.ui_settings_callback()

    def create_ui(self, loadsave, dummy_component):
        self.components = []
        self.component_dict = {}
        self.dummy_component = dummy_component

        shared.settings_components = self.component_dict

        if not _standin.at_least("1.9.0"):
            script_callbacks.ui_settings_callback()

        opts.reorder()

        self.tabs = {}
        previous_section = None
        for k, item in opts.data_labels.items():
            section_must_be_skipped = item.section[0] is None

            if previous_section != item.section and not section_must_be_skipped:
                elem_id, text = item.section
                self.tabs[f"settings_{elem_id}"] = text
                previous_section = item.section

            if section_must_be_skipped:
                self.components.append(dummy_component)
            else:
                component = create_setting_component(k)
                self.component_dict[k] = component
                self.components.append(component)
