"""Feed-forward style networks (Johnson, Alahi & Fei-Fei, "Perceptual Losses for Real-Time Style
Transfer and Super-Resolution", ECCV 2016): train a transform network per style on a folder of
photos, then stylize any photo in one forward pass.

The pieces are separate and Hydra-free (``python -m neuralstyle.train`` / ``neuralstyle.apply``
are thin command-line layers over them)::

    import optax
    from neuralstyle import VGG, StyleObjective, gram_loss, content_loss, load_image
    from neuralstyle.fast import transform_net, photo_batches, train, Stylizer

    net = transform_net(width=32, residual_blocks=5)
    loss = StyleObjective.build(VGG("vgg16", weights="torchvision"), content_layers=["conv3_3"],
                                style_layers=["conv1_2", "conv2_2", "conv3_3", "conv4_3"],
                                content_layer_weights="sum", style_layer_weights="sum",
                                content_weight=1.0, style_weight=100.0, tv_weight=0.0,
                                content_loss=content_loss("mean"), style_loss=gram_loss("hw"))
    batches, n = photo_batches("train2014/", size=256, batch_size=4, seed=0)
    result = train(net, loss, load_image("great_wave.jpg", 256), batches, optax.adam(1e-3),
                   steps=2 * n // 4, output_dir="runs/train/wave")
    Stylizer(result.model_path)(load_image("photo.jpg"))
"""

from .stylizer import Stylizer, load_transform, stylize_files
from .data import Batches, hold_out, list_images, load_crop, photo_batches, photo_dataset
from .training import (
    Checkpointer,
    TrainingDivergedError,
    TrainResult,
    TrainState,
    data_mesh,
    export_model,
    files_digest,
    init_state,
    make_train_step,
    perceptual_loss,
    replicate,
    run_lock,
    shard_batch,
    style_statistics,
    train,
)
from .transform import (
    CUSTOM_OBJECTS,
    CropLike,
    PadToMultiple,
    ReflectionPadding2D,
    TransformParams,
    apply_fn,
    get_params,
    set_params,
    transform_net,
)

__all__ = [
    "Stylizer", "load_transform", "stylize_files", "Batches", "hold_out", "list_images",
    "load_crop", "photo_batches", "photo_dataset", "Checkpointer", "TrainingDivergedError",
    "TrainResult", "TrainState", "data_mesh", "export_model", "files_digest", "init_state",
    "make_train_step", "perceptual_loss", "replicate", "run_lock", "shard_batch",
    "style_statistics", "train", "CUSTOM_OBJECTS", "CropLike",
    "PadToMultiple", "ReflectionPadding2D", "TransformParams", "apply_fn", "get_params",
    "set_params", "transform_net",
]
