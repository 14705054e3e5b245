"""animegen: train a DCGAN on a folder of anime faces and generate new ones."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_generator", "train"]


def __getattr__(name: str):
    # Import lazily so `animegen --version` and config tooling do not pay for importing torch.
    if name == "load_generator":
        from animegen.model_loading import load_generator

        return load_generator
    if name == "train":
        from animegen.training.session import train

        return train
    raise AttributeError(name)
