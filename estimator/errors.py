"""Error types. Every message names the field, the rule and the value."""


class EstimatorError(Exception):
    """Base class for every error the estimator raises on bad input."""


class InvalidSpecError(ValueError, EstimatorError):
    """A model config or a workload setting is malformed or unsupported."""


class UnknownNameError(KeyError, EstimatorError):
    """A preset, quantization, KV dtype or GPU name that the catalog does not know."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""
