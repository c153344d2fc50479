from model.config import ConfigError, LMConfig
from model.transformer import ModelOutput, Transformer

__all__ = ["ConfigError", "LMConfig", "ModelOutput", "Transformer"]
