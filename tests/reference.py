"""Hand-written reference networks the compiled specs are measured against (tests and tools/ benchmarks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TutorialNet(nn.Module):
    """The network of PyTorch's CIFAR-10 tutorial, written as the tutorial writes it.

    ``flat`` is the flattened size after the convolutions: 16·5·5 for 3×32×32 input, 16·4·4 for 1×28×28.
    """

    def __init__(self, in_channels: int = 3, flat: int = 16 * 5 * 5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(flat, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def lenet_keys(features: str = "features", head: str = "classifier") -> dict[str, str]:
    """Where the tutorial net's layers live in a LeNet spec (``lenet_features`` + ``mlp_head`` nodes)."""
    return {
        "conv1": f"{features}.conv1",
        "conv2": f"{features}.conv2",
        "fc1": f"{head}.layers.0",
        "fc2": f"{head}.layers.1",
        "fc3": f"{head}.layers.2",
    }


LENET_KEYS = lenet_keys()
