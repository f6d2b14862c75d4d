"""sdo-adv: natural adversarial images from diffusion models with shortcut (SDO) gradients."""
from .classifier import ImageClassifier
from .estimators import Estimator, parse_estimator
from .generator import Condition, Generator, Inversion
from .loading import embedded_models, load_classifier, load_generator

__version__ = "0.1.0"
__all__ = ["Condition", "Estimator", "Generator", "ImageClassifier", "Inversion", "embedded_models",
           "load_classifier", "load_generator", "parse_estimator"]
