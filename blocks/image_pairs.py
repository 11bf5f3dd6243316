"""Paired and unpaired image datasets for image-to-image translation (Pix2Pix, CycleGAN)."""
