"""Image saving, as in A1111's modules/images.py: ``save_image`` with its callbacks, and ``image_grid``."""

import os

from modules import script_callbacks
from PIL import Image, PngImagePlugin


def save_image_with_geninfo(image, geninfo, filename, extension=None, existing_pnginfo=None, pnginfo_section_name='parameters'):
    existing_pnginfo = existing_pnginfo or {}
    existing_pnginfo[pnginfo_section_name] = geninfo

    pnginfo_data = PngImagePlugin.PngInfo()
    for k, v in (existing_pnginfo or {}).items():
        pnginfo_data.add_text(k, str(v))

    image.save(filename, format="PNG", pnginfo=pnginfo_data)


def save_image(image, path, basename, seed=None, prompt=None, extension='png', info=None, short_filename=False, no_prompt=False, grid=False, pnginfo_section_name='parameters', p=None, existing_info=None, forced_filename=None, suffix="", save_to_dirs=None):
    """Save an image with its infotext (the stand-in names files <number>-<seed><suffix>.png)."""
    os.makedirs(path, exist_ok=True)
    if forced_filename is None:
        number = len([x for x in os.listdir(path) if x.endswith(f".{extension}")])
        forced_filename = f"{number:05}-{seed}{suffix}"
    fullfn = os.path.join(path, f"{forced_filename}.{extension}")

    pnginfo = existing_info or {}
    if info is not None:
        pnginfo[pnginfo_section_name] = info

    params = script_callbacks.ImageSaveParams(image, p, fullfn, pnginfo)
    script_callbacks.before_image_saved_callback(params)

    image = params.image
    fullfn = params.filename
    info = params.pnginfo.get(pnginfo_section_name, None)

    save_image_with_geninfo(image, info, fullfn, extension, existing_pnginfo=params.pnginfo, pnginfo_section_name=pnginfo_section_name)

    script_callbacks.image_saved_callback(params)

    return fullfn, None


def image_grid(imgs, batch_size=1, rows=None):
    """The images side by side in one row (the real one picks rows from the options)."""
    w, h = imgs[0].size
    grid = Image.new('RGB', size=(len(imgs) * w, h), color='black')

    for i, img in enumerate(imgs):
        grid.paste(img, box=(i * w, 0))

    return grid
