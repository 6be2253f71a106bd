"""The config groups every entry composes from (backbones, losses, optimizers, initializations,
launchers); on the search path of each entry's tree through ``pkg://neuralstyle.conf.components``."""
