"""Parameters: schema, loading, validation and the version matrix (bottom layer)."""

from .load import Problem, ParamsError, load_params, read_yaml, resolve_secret, secret_values, validate_data
from .schema import Host, Params, SecretRef

__all__ = ["Host", "Params", "ParamsError", "Problem", "SecretRef", "load_params", "read_yaml",
           "resolve_secret", "secret_values", "validate_data"]
