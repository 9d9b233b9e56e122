"""The VAE a distilled model decodes with (a pure decision) and NaN/Inf recovery in a safer precision (torch)."""
