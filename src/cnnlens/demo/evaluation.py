"""The demo's evaluation section: the digits CNN on its test split and EfficientNet-Lite0's top-5 on the photos."""

from __future__ import annotations

from ..evaluation import evaluate, report_section, topk_section


def demo_section(report, ctx) -> None:
    """The demo's evaluation part: digits-cnn on the held-out digits; EfficientNet-Lite0's top-5 on photos."""
    model = ctx.digits_model
    r = evaluate(
        model,
        ctx.digits_data,
        topk=(1, 3),
        device=ctx.device,
        progress=lambda d, t: ctx.progress("evaluation: digits-cnn", d, t),
    )
    report_section(
        report,
        r,
        settings={"model": "digits-cnn", "data": "digits (held-out split)", "top-k": [1, 3], "n": r.n},
        title="Evaluation",
    )
    names, x = ctx.photos
    ctx.progress("top-5: efficientnet-lite0", 0, 1)
    topk_section(
        report,
        ctx.effnet,
        names,
        x,
        k=5,
        title="Top-5 predictions on photos",
        settings={
            "model": "efficientnet-lite0",
            "photos": ", ".join(names),
            "preprocessing": "shorter side resized, centre crop to the model's input size",
        },
    )
    ctx.progress("top-5: efficientnet-lite0", 1, 1)
