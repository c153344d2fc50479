from model.config import ConfigError, LMConfig

__all__ = ["ConfigError", "LMConfig"]
