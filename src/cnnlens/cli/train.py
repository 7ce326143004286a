"""`cnnlens train digits`: train the digits CNN and write its weight file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .common import app, progress_bar

# Imported late, inside functions: torch and the cnnlens modules that import it (train, models, attacks). `cnnlens
# --help` imports this module, and torch alone would add ≈2 s to it.

train_app = typer.Typer(help="Train the small models that ship with cnnlens.", no_args_is_help=True)
app.add_typer(train_app, name="train")


#: the train commands' options (--robust: digits only)
TrainSeed = Annotated[int, typer.Option("--seed", help="Seed of the initialisation and the batch order.")]
TrainEpochs = Annotated[
    int | None, typer.Option("--epochs", help="Passes over the training split (default: as shipped).")
]
TrainOut = Annotated[Path, typer.Option("--out", "-o", help="Weight file to write (.safetensors).")]
TrainRobust = Annotated[
    str,
    typer.Option(
        "--robust",
        help="Training objective: none (cross-entropy), adversarial "
        "(clean + FGSM-with-random-start images, ε=0.1) or gradient-penalty (CE + λ·||∂CE/∂x||², λ=1).",
    ),
]


@train_app.command("digits")
def digits(
    *,
    seed: TrainSeed = 0,
    epochs: TrainEpochs = None,
    out: TrainOut = Path("digits_cnn.safetensors"),
    robust: TrainRobust = "none",
) -> None:
    """Train digits-cnn on scikit-learn's digits (deterministic), print held-out accuracy, write the weights.

    The shipped weights come from:
    cnnlens train digits --seed 0 --epochs 20 --out src/cnnlens/models/weights/digits_cnn.safetensors
    and the robust variants (see cnnlens.attacks.robust) from:
    cnnlens train digits --seed 0 --epochs 20 --robust adversarial
    --out src/cnnlens/models/weights/digits_cnn_adversarial.safetensors
    cnnlens train digits --seed 0 --epochs 20 --robust gradient-penalty
    --out src/cnnlens/models/weights/digits_cnn_gradient_penalty.safetensors
    """
    import torch

    from ..attacks.robust import robust_loss
    from ..models.digits import digits_split
    from ..train import EPOCHS, accuracy, save_digits, train_digits

    epochs = EPOCHS if epochs is None else epochs
    try:
        loss_fn = robust_loss(robust)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--robust") from None
    if out.exists() and out.is_dir():
        raise typer.BadParameter(f"{out} is a directory; give a file name ending in .safetensors", param_hint="--out")
    t0 = time.perf_counter()
    with progress_bar("training digits-cnn", total=epochs) as update:
        model = train_digits(seed=seed, epochs=epochs, loss_fn=loss_fn, progress=update)
    seconds = time.perf_counter() - t0
    acc = accuracy(model)
    command = f"cnnlens train digits --seed {seed} --epochs {epochs} --out {out}"
    if loss_fn is not None:
        command += f" --robust {robust}"
    save_digits(
        model,
        out,
        metadata={
            "seed": seed,
            "epochs": epochs,
            "test_accuracy": f"{acc:.4f}",
            "command": command,
            "torch": torch.__version__,
            **({"robust": loss_fn.describe()} if loss_fn is not None else {}),
        },
    )
    typer.echo(
        f"held-out accuracy {acc:.2%} ({len(digits_split('test'))} images) after {epochs} epochs, "
        f"{seconds:.1f} s; wrote {out}"
    )


@train_app.command("cluttered-digits")
def cluttered_digits_cmd(
    *,
    seed: TrainSeed = 0,
    epochs: TrainEpochs = None,
    out: TrainOut = Path("cluttered_digits_cnn.safetensors"),
) -> None:
    """Train cluttered-digits-cnn on the cluttered-digits train split (deterministic), print held-out accuracy,
    write the weights.

    The shipped weights come from:
    cnnlens train cluttered-digits --seed 0 --epochs 12
    --out src/cnnlens/models/weights/cluttered_digits_cnn.safetensors
    """
    import torch

    from ..models.cluttered import cluttered_digits
    from ..train import CLUTTERED_EPOCHS, accuracy, save_digits, train_cluttered

    epochs = CLUTTERED_EPOCHS if epochs is None else epochs
    if out.exists() and out.is_dir():
        raise typer.BadParameter(f"{out} is a directory; give a file name ending in .safetensors", param_hint="--out")
    t0 = time.perf_counter()
    with progress_bar("training cluttered-digits-cnn", total=epochs) as update:
        model = train_cluttered(seed=seed, epochs=epochs, progress=update)
    seconds = time.perf_counter() - t0
    test = cluttered_digits("test")
    acc = accuracy(model, test)
    command = f"cnnlens train cluttered-digits --seed {seed} --epochs {epochs} --out {out}"
    save_digits(
        model,
        out,
        metadata={
            "seed": seed,
            "epochs": epochs,
            "test_accuracy": f"{acc:.4f}",
            "command": command,
            "torch": torch.__version__,
        },
    )
    typer.echo(f"held-out accuracy {acc:.2%} ({len(test)} images) after {epochs} epochs, {seconds:.1f} s; wrote {out}")
