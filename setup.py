"""Install sdo-adv. The top-level folders ``attacks/`` and ``cli/`` install as
``sdo_adv.attacks`` and ``sdo_adv.cli`` so that the package owns a single import namespace."""
from setuptools import setup

setup(
    name="sdo-adv",
    version="0.1.0",
    description="Natural adversarial images from diffusion models with Shortcut Diffusion Optimization",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["sdo_adv", "sdo_adv.attacks", "sdo_adv.cli"],
    package_dir={"sdo_adv": "sdo_adv", "sdo_adv.attacks": "attacks", "sdo_adv.cli": "cli"},
    package_data={"sdo_adv": ["models/*/*.json", "models/*/*.safetensors", "models/*/*/*.json",
                              "models/*/*/*.safetensors", "data/*.npz"]},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "numpy",
        "click>=8.1",
        "safetensors>=0.4",
        "tqdm",
        "pyyaml",
        "matplotlib",
        "scipy",
        "accelerate",
        # diffusers and timm both reach the Hugging Face hub; timm 1.0.9 (pinned by
        # robustbench 1.1.1) breaks on huggingface_hub >= 1.0, so the hub stays below 1.0.
        "diffusers>=0.32,<0.40",
        "huggingface_hub>=0.34,<1.0",
        "timm==1.0.9",
        "robustbench==1.1.1",
        # robustbench imports pkg_resources, which setuptools 82 removed.
        "setuptools<82",
        # robustbench imports `autoattack`; PyPI ships it as pyautoattack (aliased at import).
        "pyautoattack>=0.2.0",
        # torchattacks 3.5.1 pins requests~=2.25.1 (and so idna<3).
        "torchattacks==3.5.1",
        "requests~=2.25.1",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist", "hypothesis", "transformers>=4.40,<5", "scikit-image", "peft>=0.13"],
        "lora": ["peft>=0.13"],  # UniversalSDO(variable="lora"); peft brings transformers
        "train": ["mlxtend>=0.23", "scikit-learn"],  # scikit-learn: the judge is fitted with it, then runs in torch
    },
    entry_points={"console_scripts": ["sdo-adv=sdo_adv.cli.main:main"]},
)
