"""Offline datasets for the real pipelines, built and read through tensorflow-datasets.

See :mod:`pipelines.data.common` for how data is prepared once into a data
directory (array_record files, no TensorFlow needed) and loaded as NumPy arrays.
"""
