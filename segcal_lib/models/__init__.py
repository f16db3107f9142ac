"""Segmentation networks from timm backbones, their training loop and train-or-load cache."""
