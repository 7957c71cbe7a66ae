"""fedcascade: clustered, differentially private federated learning for marginalized communities."""

__version__ = "0.1.0"
