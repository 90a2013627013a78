"""Models: ``mlp``, ``cnn1d``, ``convnet``, ``resnet20``/``resnet56``, or ``module:function``.

Every factory takes ``(input_shape, num_classes, dropout)``. Dropout sits where it
regularizes: between the hidden layers of the MLP and before the classifier of
the convolutional models (where the features are widest and most co-adapted).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from balance.config import ConfigError
from balance.plugins import import_object, object_label

ModelFactory = Callable[[tuple[int, ...], int, float], nn.Module]


def mlp(
    input_shape: tuple[int, ...], num_classes: int, dropout: float, width: int = 256, depth: int = 2
) -> nn.Module:
    """A ReLU multilayer perceptron on flattened inputs, dropout after each hidden layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def _conv1d_block(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    ]


def cnn1d(
    input_shape: tuple[int, ...], num_classes: int, dropout: float, channels: int = 32
) -> nn.Module:
    """A three-layer 1-D CNN for MNIST-1D (``(C, L)`` inputs), dropout before the classifier."""
    if len(input_shape) != 2:
        raise ConfigError(f"model: cnn1d needs (channels, length) inputs, got {input_shape}")
    c_in, length = input_shape
    out_length = length
    for stride in (1, 2, 2):
        out_length = (out_length - 1) // stride + 1
    return nn.Sequential(
        *_conv1d_block(c_in, channels, 5, 1),
        *_conv1d_block(channels, channels, 3, 2),
        *_conv1d_block(channels, channels, 3, 2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(channels * out_length, num_classes),
    )


def _conv2d_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def convnet(
    input_shape: tuple[int, ...], num_classes: int, dropout: float, width: int = 32
) -> nn.Module:
    """A small VGG-style convnet for 28x28 and 32x32 images: three conv-pool stages."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"model: convnet needs (channels, height, width) inputs, got {input_shape}"
        )
    c_in = input_shape[0]
    return nn.Sequential(
        *_conv2d_block(c_in, width),
        nn.MaxPool2d(2),
        *_conv2d_block(width, 2 * width),
        nn.MaxPool2d(2),
        *_conv2d_block(2 * width, 4 * width),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(4 * width, num_classes),
    )


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6n+2: 16/32/64 channels), dropout before the classifier."""

    def __init__(
        self, depth: int, input_shape: tuple[int, ...], num_classes: int, dropout: float
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ConfigError(f"model: CIFAR ResNet depth must be 6n+2, got {depth}")
        if len(input_shape) != 3:
            raise ConfigError(
                f"model: resnet needs (channels, height, width) inputs, got {input_shape}"
            )
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(*_conv2d_block(input_shape[0], 16))
        layers: list[nn.Module] = []
        c_in = 16
        for stage, c_out in enumerate((16, 32, 64)):
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(_BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(64, num_classes)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))


def resnet20(input_shape: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    """CIFAR ResNet-20 (0.27M parameters)."""
    return CifarResNet(20, input_shape, num_classes, dropout)


def resnet56(input_shape: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    """CIFAR ResNet-56 (0.85M parameters), the network of Smith's super-convergence paper."""
    return CifarResNet(56, input_shape, num_classes, dropout)


MODELS: dict[str, ModelFactory] = {
    "mlp": mlp,
    "cnn1d": cnn1d,
    "convnet": convnet,
    "resnet20": resnet20,
    "resnet56": resnet56,
}


def build_model(
    name: str | ModelFactory, input_shape: tuple[int, ...], num_classes: int, dropout: float
) -> nn.Module:
    """Build a model by name, or call a user's ``"module:function"`` or factory object
    (the Python API's ``model=``) with the same arguments."""
    if isinstance(name, str) and name in MODELS:
        return MODELS[name](input_shape, num_classes, dropout)
    if isinstance(name, str):
        factory, shown = import_object(name, "model"), repr(name)
    elif callable(name):
        factory, shown = name, object_label(name)
    else:
        raise ConfigError(
            "model: expected a factory (input_shape, num_classes, dropout) -> nn.Module, "
            f"got {type(name).__name__}"
        )
    model = factory(input_shape, num_classes, dropout)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: {shown} must return a torch.nn.Module, got {type(model)}")
    return model
