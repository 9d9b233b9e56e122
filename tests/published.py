"""Published figures the tests compare against: UNet sizes from the model cards and papers
(``architectures.md`` §2, §8; the refiner's from its 9.04 GB fp32 UNet file) and the tensor counts
of the published UNet files."""

UNET_PARAMETERS = {
    "sdxl": 2_567_463_684,
    "sdxl-refiner": 2_259_526_660,
    "ssd-1b": 1_331_334_404,
    "segmind-vega": 745_225_604,
    "koala-700m": 782_822_724,
    "koala-1b": 1_161_184_324,
}

UNET_TENSORS = {
    "sdxl": 1680,
    "sdxl-refiner": 1220,
    "ssd-1b": 944,
    "segmind-vega": 564,
    "koala-700m": 584,
    "koala-1b": 790,
}
