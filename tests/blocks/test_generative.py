"""The VQ-VAE blocks: the quantizer against brute force and hand-computed losses, and the gradient routing."""

from __future__ import annotations

import torch

from blocks.generative import ConvDecoder, ConvEncoder
from blocks.quantizers import VectorQuantizer


def quantizer_and_input(beta: float = 0.25) -> tuple[VectorQuantizer, torch.Tensor]:
    torch.manual_seed(0)
    vq = VectorQuantizer(embedding_dim=4, num_codes=12, beta=beta)
    with torch.no_grad():
        vq.codebook.normal_()
    return vq, torch.randn(2, 4, 3, 5, requires_grad=True)


def test_codes_are_the_nearest_codebook_entries() -> None:
    vq, x = quantizer_and_input()
    out = vq(x)
    vectors = x.detach().double().permute(0, 2, 3, 1).reshape(-1, 4)
    distances = ((vectors[:, None, :] - vq.codebook.detach().double()[None]) ** 2).sum(-1)
    assert torch.equal(out["codes"], distances.argmin(1).view(2, 3, 5))
    nearest = vq.codebook.detach()[out["codes"]].permute(0, 3, 1, 2)
    torch.testing.assert_close(out["quantized"], nearest, rtol=0, atol=1e-6)


def test_losses_by_hand() -> None:
    vq, x = quantizer_and_input(beta=0.5)
    out = vq(x)
    nearest = vq.codebook.detach()[out["codes"]].permute(0, 3, 1, 2)
    squared = ((x.detach() - nearest) ** 2).sum() / x.numel()
    torch.testing.assert_close(out["codebook_loss"], squared)
    torch.testing.assert_close(out["commitment_loss"], 0.5 * squared)


def test_each_loss_moves_only_its_side() -> None:
    vq, x = quantizer_and_input()
    out = vq(x)
    grad_x, grad_codebook = torch.autograd.grad(out["codebook_loss"], [x, vq.codebook], allow_unused=True)
    assert grad_x is None and grad_codebook is not None
    grad_x, grad_codebook = torch.autograd.grad(out["commitment_loss"], [x, vq.codebook], allow_unused=True)
    assert grad_x is not None and grad_codebook is None


def test_straight_through_gradient_is_the_identity() -> None:
    vq, x = quantizer_and_input()
    upstream = torch.randn(2, 4, 3, 5)
    (grad_x,) = torch.autograd.grad(vq(x)["quantized"], [x], upstream)
    assert torch.equal(grad_x, upstream)


def test_straight_through_gradient_reaches_the_encoder_input_unchanged() -> None:
    torch.manual_seed(0)
    encoder, vq = ConvEncoder(in_channels=1, latent_dim=4), VectorQuantizer(embedding_dim=4, num_codes=8)
    image = torch.randn(2, 1, 28, 28, requires_grad=True)
    upstream = torch.randn(2, 4, 7, 7)
    (through_vq,) = torch.autograd.grad(vq(encoder(image))["quantized"], [image], upstream)
    (without_vq,) = torch.autograd.grad(encoder(image), [image], upstream)
    assert torch.equal(through_vq, without_vq)


def test_vq_vae_reconstructs_the_input_shape() -> None:
    encoder, vq, decoder = ConvEncoder(), VectorQuantizer(), ConvDecoder()
    image = torch.randn(3, 1, 28, 28)
    assert decoder(vq(encoder(image))["quantized"]).shape == image.shape
