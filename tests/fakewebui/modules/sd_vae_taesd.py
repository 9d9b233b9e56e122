"""
Tiny AutoEncoder for Stable Diffusion
(DNN for encoding / decoding SD's latent space)

https://github.com/madebyollin/taesd
"""
import os
import urllib.error

import torch
import torch.nn as nn
from modules import _standin, devices, paths_internal, shared

sd_vae_taesd_models = {}


def conv(n_in, n_out, **kwargs):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    @staticmethod
    def forward(x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def _decoder(latent_channels):
    return nn.Sequential(
        Clamp(), conv(latent_channels, 64), nn.ReLU(),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), conv(64, 3),
    )


def _encoder(latent_channels):
    return nn.Sequential(
        conv(3, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        conv(64, latent_channels),
    )


def _load(path):
    return torch.load(path, map_location='cpu' if devices.device.type != 'cuda' else None, weights_only=True)


class _TAESDDecoder(nn.Module):
    latent_magnitude = 3
    latent_shift = 0.5

    def _init(self, decoder_path, latent_channels):
        super().__init__()
        self.decoder = _decoder(latent_channels)
        self.decoder.load_state_dict(_load(decoder_path))


class _TAESDEncoder(nn.Module):
    latent_magnitude = 3
    latent_shift = 0.5

    def _init(self, encoder_path, latent_channels):
        super().__init__()
        self.encoder = _encoder(latent_channels)
        self.encoder.load_state_dict(_load(encoder_path))


if _standin.at_least("1.10.0"):  # SD3's 16-channel latents
    def decoder(latent_channels=4):
        return _decoder(latent_channels)

    def encoder(latent_channels=4):
        return _encoder(latent_channels)

    class TAESDDecoder(_TAESDDecoder):
        def __init__(self, decoder_path="taesd_decoder.pth", latent_channels=None):
            """Initialize pretrained TAESD on the given device from the given checkpoints."""
            if latent_channels is None:
                latent_channels = 16 if "taesd3" in str(decoder_path) else 4
            self._init(decoder_path, latent_channels)

    class TAESDEncoder(_TAESDEncoder):
        def __init__(self, encoder_path="taesd_encoder.pth", latent_channels=None):
            """Initialize pretrained TAESD on the given device from the given checkpoints."""
            if latent_channels is None:
                latent_channels = 16 if "taesd3" in str(encoder_path) else 4
            self._init(encoder_path, latent_channels)
else:
    def decoder():
        return _decoder(4)

    def encoder():
        return _encoder(4)

    class TAESDDecoder(_TAESDDecoder):
        def __init__(self, decoder_path="taesd_decoder.pth"):
            """Initialize pretrained TAESD on the given device from the given checkpoints."""
            self._init(decoder_path, 4)

    class TAESDEncoder(_TAESDEncoder):
        def __init__(self, encoder_path="taesd_encoder.pth"):
            """Initialize pretrained TAESD on the given device from the given checkpoints."""
            self._init(encoder_path, 4)


def download_model(model_path, model_url):
    if not os.path.exists(model_path):
        os.makedirs(os.path.dirname(model_path), exist_ok=True)

        # the real host downloads it with torch.hub here; the stand-in is offline, like a CI machine
        raise urllib.error.URLError(f"stand-in webui is offline: cannot download {model_url} to {model_path}")


def decoder_model():
    model_name = "taesdxl_decoder.pth" if getattr(shared.sd_model, 'is_sdxl', False) else "taesd_decoder.pth"  # v1.10 also knows taesd3
    loaded_model = sd_vae_taesd_models.get(model_name)

    if loaded_model is None:
        model_path = os.path.join(paths_internal.models_path, "VAE-taesd", model_name)
        download_model(model_path, 'https://github.com/madebyollin/taesd/raw/main/' + model_name)

        if os.path.exists(model_path):
            loaded_model = TAESDDecoder(model_path)
            loaded_model.eval()
            loaded_model.to(devices.device, devices.dtype)
            sd_vae_taesd_models[model_name] = loaded_model
        else:
            raise FileNotFoundError('TAESD model not found')

    return loaded_model.decoder


def encoder_model():
    model_name = "taesdxl_encoder.pth" if getattr(shared.sd_model, 'is_sdxl', False) else "taesd_encoder.pth"  # v1.10 also knows taesd3
    loaded_model = sd_vae_taesd_models.get(model_name)

    if loaded_model is None:
        model_path = os.path.join(paths_internal.models_path, "VAE-taesd", model_name)
        download_model(model_path, 'https://github.com/madebyollin/taesd/raw/main/' + model_name)

        if os.path.exists(model_path):
            loaded_model = TAESDEncoder(model_path)
            loaded_model.eval()
            loaded_model.to(devices.device, devices.dtype)
            sd_vae_taesd_models[model_name] = loaded_model
        else:
            raise FileNotFoundError('TAESD model not found')

    return loaded_model.encoder
