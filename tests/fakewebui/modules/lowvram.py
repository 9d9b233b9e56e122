"""--lowvram/--medvram bookkeeping (on CPU there is nothing to move; only the flags matter)."""

from modules import shared

module_in_gpu = None


def send_everything_to_cpu():
    global module_in_gpu

    module_in_gpu = None


def is_needed(sd_model):
    return shared.cmd_opts.lowvram or shared.cmd_opts.medvram or (shared.cmd_opts.medvram_sdxl and hasattr(sd_model, 'conditioner'))


def apply(sd_model):
    enable = is_needed(sd_model)
    shared.parallel_processing_allowed = not enable

    sd_model.lowvram = bool(enable)


def is_enabled(sd_model):
    return sd_model.lowvram
