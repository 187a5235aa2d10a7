"""cxrclip_jax: LLM text encoders and LLM-CLIP dual towers for chest X-ray reports, in JAX."""
import setuptools

setuptools.setup(
    name="cxrclip_jax",
    version="0.1.0",
    description="LLM2VEC4CXR / LLM2CLIP4CXR in JAX/Flax (after arXiv 2509.15234)",
    packages=setuptools.find_packages(include=["cxrclip_jax*", "data_pipelines*", "configs*"]),
    python_requires=">=3.10",
    install_requires=[
        # jax.make_mesh(axis_types=...) and jax.sharding.AxisType.
        "jax>=0.6.0",
        # flax.linen with logical partitioning (nn.with_logical_partitioning, nn.logical_to_mesh_sharding).
        "flax>=0.10.0",
        "optax>=0.2.4",
        # ocp.CheckpointManager with args.Composite / StandardSave.
        "orbax-checkpoint>=0.11.0",
        # grain.MapDataset, mp_prefetch, grain.sources.ArrayRecordDataSource, grain.transforms.Map.
        "grain>=0.2.12",
        "array-record>=0.7.1",
        "ml-collections>=1.0.0",
        # tfds.dataset_builders.GeneratorBasedBuilder with file_format="array_record".
        "tensorflow-datasets>=4.9.7",
        # Reads both config formats: rope_theta/rope_scaling (4.4x) and rope_parameters (5.x).
        "transformers>=4.44.0",
        "safetensors>=0.4.3",
        "absl-py>=2.1.0",
        "numpy>=1.26",
        "pillow>=10.0",
        "pydicom>=3.0.0",
        "tqdm>=4.66",
    ],
    extras_require={
        # Converting the SmolLM2 GGUF asset into a plain HF directory goes through transformers' GGUF
        # loader, which needs torch and gguf; only the one-time asset step uses them.
        "assets": ["gguf>=0.10.0", "accelerate>=0.26.0", "torch==2.13.0"],
        "test": ["pytest>=8.0", "torch==2.13.0", "gguf>=0.10.0", "accelerate>=0.26.0"],
    },
)
