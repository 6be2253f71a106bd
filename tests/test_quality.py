"""What optimization claims, measured with real ImageNet VGG19 weights on small images.

These tests catch what unit tests cannot: a wrong preprocessing, a wrong layer, a sign error or
a broken optimizer all leave the style distance high or destroy the content.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neuralstyle import StyleObjective, lbfgs, load_content_and_style, stylize

pytestmark = pytest.mark.slow

TUTORIAL_ADAM = dict(learning_rate=0.02, b1=0.99, eps=0.1)


@pytest.fixture(scope="module")
def tutorial_objective(imagenet_vgg19):
    """The TensorFlow tutorial objective (the defaults of StyleObjective.build)."""
    return StyleObjective.build(imagenet_vgg19)


@pytest.fixture(scope="module")
def astronaut_adam_60(tutorial_objective, image_dir):
    """60 steps of the tutorial's Adam on astronaut / Great Wave at 96 px: the style and content
    test and the colour test read its result, the L-BFGS comparison the loss after 30 steps
    (``history[k]`` is the loss of the k-th iterate, the final loss of a k-step run)."""
    content, style = load_content_and_style("astronaut", "great_wave", size=96, image_dir=image_dir)
    result = stylize(tutorial_objective, content, style, optax.adam(**TUTORIAL_ADAM), steps=60,
                     progress=False)
    return content, style, result


@jax.jit  # one program per network and image shape (the extractor is static in the objective's tree)
def _relative_content_error(objective, params, image, content):
    layer = objective.content_layers[0]
    fx = objective.extractor.apply(params, image[None])[layer]
    fc = objective.extractor.apply(params, content[None])[layer]
    return jnp.sum((fx - fc) ** 2) / jnp.sum(fc**2)


def relative_content_error(objective, image, content):
    """||F(x) - F(c)||^2 / ||F(c)||^2 at the content layer: 0 at the content, ~1 for unrelated images."""
    return float(_relative_content_error(objective, objective.params, jnp.asarray(image), jnp.asarray(content)))


def test_adam_lowers_style_tenfold_and_keeps_content(tutorial_objective, astronaut_adam_60, image_dir):
    """60 steps of the tutorial's Adam at 96 px (the shared astronaut run).  Measured on an AMD
    EPYC: the style term falls 23.9x; the relative content error is 0.59 against 1.66 for an
    unrelated photo (chelsea: 9.1x and 0.14 after 60 steps, so that photo would need a second,
    longer run)."""
    content, _, result = astronaut_adam_60
    m = result.metrics
    print("style", m["initial"]["style"], "->", m["final"]["style"])
    assert m["final"]["style"] < m["initial"]["style"] / 10
    # The photo stays recognisable: its content features move by less than their own size,
    # while a different photo is far away.
    other, _ = load_content_and_style("coffee", "great_wave", size=96, image_dir=image_dir)
    other = np.asarray(jnp.asarray(np.resize(other, content.shape)))
    kept = relative_content_error(tutorial_objective, result.image, content)
    unrelated = relative_content_error(tutorial_objective, other, content)
    print("relative content error", kept, "unrelated photo", unrelated)
    assert kept < 0.75, kept
    assert unrelated > 2 * kept, (unrelated, kept)


def test_style_statistics_move_towards_the_painting(astronaut_adam_60):
    """The stylized photo's colours approach the Great Wave's (a check a sign error would fail).

    Measured: the summed per-channel mean difference falls from 0.44 to 0.37 in 60 steps (the
    tutorial's content weight keeps much of the photo's palette)."""
    content, style, result = astronaut_adam_60
    before = np.abs(content.mean(axis=(0, 1)) - style.mean(axis=(0, 1))).sum()
    after = np.abs(result.image.mean(axis=(0, 1)) - style.mean(axis=(0, 1))).sum()
    print("colour distance to the painting", before, "->", after)
    assert after < 0.9 * before, (before, after)


def test_lbfgs_beats_adam_at_equal_iterations(tutorial_objective, astronaut_adam_60):
    """jcjohnson/neural-style's default optimizer: 30 L-BFGS iterations vs 30 Adam steps.

    Measured at 256 px: about 2.5x lower loss; at the 96 px used here 3.4x (2.3e8 vs 6.7e7),
    and the test asks for 2x.  Adam's loss after 30 steps is the 60-step run's 30th iterate.
    """
    content, style, adam = astronaut_adam_60
    adam_30 = adam.metrics["history"][30]
    quasi_newton = stylize(tutorial_objective, content, style, lbfgs(), steps=30, progress=False)
    print("adam", adam_30, "lbfgs", quasi_newton.metrics["final"]["total"])
    assert quasi_newton.metrics["final"]["total"] < adam_30 / 2
    # one forward/backward pass per iteration, almost always
    assert quasi_newton.metrics["function_evaluations"] <= 1.2 * 30 + 1


@pytest.fixture(scope="module")
def imagenet_vgg19_avg():
    from neuralstyle import VGG

    return VGG("vgg19", weights="imagenet", pooling="avg")


def gatys_objective(vgg, content_weight):
    from neuralstyle import content_loss, gram_loss

    return StyleObjective.build(
        vgg,
        content_layers=["conv4_2"], style_layers=["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
        content_weight=content_weight, style_weight=1e3, tv_weight=0.0,
        content_loss=content_loss("paper"), style_loss=gram_loss("paper"),
    )


def test_gatys_recipe_from_noise(imagenet_vgg19_avg, image_dir):
    """Paper setting (avg pooling, conv4_2, eq. 1 and eq. 4 normalizations, L-BFGS from noise).

    With alpha/beta = 1e-3 the style term falls by ~44x in 40 iterations at 64 px (measured).
    The content term pulls the image towards the photo: with alpha/beta = 0.1 the relative
    content error after 40 iterations is 0.85 against 1.65 with 1e-3 (measured on an AMD EPYC).
    On this unnormalized network the paper's 1e-3 barely moves it in 40 iterations (1.652 without
    a content term, so that run is not repeated here; see conf/run/experiment/gatys2016.yaml).
    """
    content, style = load_content_and_style("chelsea", "starry_night", size=64, image_dir=image_dir)
    runs = {cw: stylize(gatys_objective(imagenet_vgg19_avg, cw), content, style, lbfgs(), steps=40,
                        init="noise", progress=False) for cw in (1.0, 100.0)}
    m = runs[1.0].metrics
    assert m["final"]["style"] < m["initial"]["style"] / 10
    reference = gatys_objective(imagenet_vgg19_avg, 1.0)
    distance = {cw: relative_content_error(reference, r.image, content) for cw, r in runs.items()}
    assert distance[100.0] < 0.7 * distance[1.0], distance


# Factor by which 20 Adam steps (lr 0.02, b1 0.99, eps 0.1) of the style term alone lower each
# family's loss from its value at the content image (chelsea / starry_night, 64 px, relu1_1..relu5_1;
# MRF on relu3_1 and relu4_1), measured on a 2-core AMD EPYC (AVX2).  In brackets the factors after
# 40 steps, which these tests ran before; the same run reproduced the earlier record of them:
#   gram 5.8 (10.6), mean_std 2.2 (3.3), bn_statistics 4.5 (8.9), mmd_linear 5.6 (12.0),
#   mmd_polynomial 5.8 (10.6), mmd_gaussian 1.029 (1.07), swd 3.0 (4.7), histogram 3.7 (6.0),
#   mrf 3.0 (4.7).
# The tests ask for about 80% of each (the Gaussian MMD, with the bandwidth set to the mean squared
# distance between style positions, moves slowly: it is only asked to fall by 1%).  20 steps, not
# 40: every family already falls by a clear factor, and the nine runs took about 150 s of the
# suite's time on the EPYC.
FAMILY_STEPS = 20
FAMILY_FACTORS = {
    "gram": 4.6, "mean_std": 1.75, "bn_statistics": 3.6, "mmd_linear": 4.5, "mmd_polynomial": 4.6,
    "mmd_gaussian": 1.01, "swd": 2.4, "histogram": 2.9, "mrf": 2.4,
}


def family(name):
    from neuralstyle import (bn_statistics_loss, gram_loss, histogram_loss, mean_std_loss, mmd_loss,
                             mrf_loss, sliced_wasserstein_loss)

    return {
        "gram": lambda: gram_loss("hw"), "mean_std": mean_std_loss, "bn_statistics": bn_statistics_loss,
        "mmd_linear": lambda: mmd_loss("linear"), "mmd_polynomial": lambda: mmd_loss("polynomial"),
        "mmd_gaussian": lambda: mmd_loss("gaussian"), "swd": sliced_wasserstein_loss,
        "histogram": histogram_loss, "mrf": mrf_loss,
    }[name]()


@pytest.mark.parametrize("name", FAMILY_FACTORS)
def test_optimizing_each_family_alone_lowers_it(name, imagenet_vgg19, image_dir):
    layers = ["relu3_1", "relu4_1"] if name == "mrf" else ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    objective = StyleObjective.build(imagenet_vgg19, content_layers=["relu4_2"], style_layers=layers,
                                     content_weight=0.0, style_weight=1.0, tv_weight=0.0,
                                     style_loss=family(name))
    content, style = load_content_and_style("chelsea", "starry_night", size=64, image_dir=image_dir)
    m = stylize(objective, content, style, optax.adam(**TUTORIAL_ADAM), steps=FAMILY_STEPS,
                progress=False).metrics
    factor = m["initial"]["style"] / m["final"]["style"]
    print(name, "factor", factor)
    assert factor > FAMILY_FACTORS[name]
