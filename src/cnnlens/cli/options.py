"""The options the commands share, declared once as typer ``Annotated`` aliases.

A command writes ``model: Model`` or ``device: Device = "cpu"`` (the default stays in the command's signature, the
flags and help text live here), so ``--model`` reads the same in every ``cnnlens X --help``. An option whose help
says something of its own command (``explain --data``, ``attack --batch-size``) is declared in that command.
The spec options (``--mean``, ``--std``, ``--input-size``, ...) are here too; :func:`cnnlens.cli.common.model_options`
adds them to every command that takes ``--model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# the model
Model = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="efficientnet-lite0, digits-cnn, timm:NAME, torchvision:NAME, or package.module:factory."
    ),
]
Weights = Annotated[Path | None, typer.Option("--weights", "-w", help="Weights file (.safetensors, .pt/.pth).")]
Pretrained = Annotated[
    bool, typer.Option("--pretrained", help="Let timm/torchvision download their pretrained weights.")
]
TrustPickle = Annotated[
    bool, typer.Option("--trust-pickle", help="Allow loading a whole pickled model (runs code from the file).")
]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]

# what the model expects (added by model_options; all default to None: the model's own spec)
Mean = Annotated[
    str | None,
    typer.Option(
        "--mean", help="Per-channel mean the model was trained with, e.g. 0.485,0.456,0.406 (one value: every channel)."
    ),
]
Std = Annotated[str | None, typer.Option("--std", help="Per-channel std, e.g. 0.229,0.224,0.225.")]
InputSize = Annotated[
    str | None,
    typer.Option(
        "--input-size", help="Input size the model expects: 224, H,W or C,H,W (default: the model's, else 224)."
    ),
]
_CHANNELS_HELP = "Input channels the model expects: 1 (grey) or 3 (RGB)."
ChannelsOrInputChannels = Annotated[int | None, typer.Option("--channels", "--input-channels", help=_CHANNELS_HELP)]
InputChannels = Annotated[int | None, typer.Option("--input-channels", help=_CHANNELS_HELP)]  # beside a --channels
ClassNames = Annotated[
    Path | None,
    typer.Option("--class-names", help="File of class names: one a line, or JSON (a list, or {index: name})."),
]
NumClasses = Annotated[
    int | None,
    typer.Option("--num-classes", min=1, help="Number of classes of the model's head (default: from the weights)."),
]

# where results go
Out = Annotated[
    Path,
    typer.Option("--out", "-o", help="Output directory (files and report); a new, empty or previous-report folder."),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace the output folder even if it holds other files (never the current "
        "directory, home, or a folder holding an input).",
    ),
]

# the data
ImagesData = Annotated[
    str | None,
    typer.Option(
        "--data", "-d", help="digits, an ImageFolder directory, or a flat folder of images (no labels needed)."
    ),
]
LabelledData = Annotated[
    str, typer.Option("--data", "-d", help="digits, or an ImageFolder directory (one sub-folder per class).")
]
Image = Annotated[
    list[str] | None,
    typer.Option("--image", "-i", help="Image file(s), folder or glob (repeat the option for several)."),
]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]
FirstN = Annotated[int | None, typer.Option("--n", min=1, help="Scan only the first n images.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]

# inside a network
Layer = Annotated[str, typer.Option("--layer", "-l", help="Dotted layer name (see `cnnlens layers --model M`).")]
Channels = Annotated[
    str | None,
    typer.Option("--channels", "-c", help="Channels, e.g. 0,3,5 or 0-7 (default: all, or a few)."),
]
