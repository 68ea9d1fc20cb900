from setuptools import find_packages, setup

setup(
    name="orthoasr",
    version="0.1.0",
    description="Conformer-CTC supernet training with OrthoSoftmax on Triton kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["orthoasr", "orthoasr.*"]) + ["orthoasr.kernels",
                                                                   "orthoasr.configs"],
    package_dir={"orthoasr": "orthoasr", "orthoasr.kernels": "kernels",
                 "orthoasr.configs": "configs"},
    # torch: the Makefile installs the CPU build (torch==2.13.0) first on CPU machines, so
    # this range adds nothing there; GPU machines bring their own CUDA build. triton: the
    # versions tested (3.6 on the GPU, 3.9 under the interpreter); kernels/launch.py takes
    # its direct path on 3.6 only. torch 2.7: torch.compiler.is_exporting (the exported
    # program's length check); the versions tested are 2.11 (GPU) and 2.13 (CPU).
    install_requires=["torch>=2.7", "triton>=3.6,<3.10", "numpy", "sentencepiece", "pyyaml",
                      "matplotlib", "espeakng-loader", "soundfile", "soxr", "rapidfuzz",
                      "tqdm"],
    # graphs: CUDA-graph IF nodes (GraphedEncoder(skip_dead_blocks=True), orthoasr.conditional)
    extras_require={"test": ["pytest", "pytest-xdist"], "bench": ["pytest-benchmark"],
                    "graphs": ["cuda-bindings>=12.8"]},
    package_data={"orthoasr.configs": ["*.yaml"]},
    entry_points={"console_scripts": ["orthoasr=orthoasr.cli:main"]},
)
