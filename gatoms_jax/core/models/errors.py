"""Errors raised while loading models, shared by every loader module."""

from __future__ import annotations


class ModelLoadError(ValueError):
  """A model file or directory could not be loaded; the message says why."""


class UnsupportedModelError(ModelLoadError):
  """The file is readable but uses something this port does not implement
  (an architecture, a quantisation type, a tensor); the message names it and
  lists what is supported."""
