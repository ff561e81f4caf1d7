"""The infra holder and its zygote: stdlib only, they run under ``python3 -I -S``."""
