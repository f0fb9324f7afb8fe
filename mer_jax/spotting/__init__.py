"""Micro- and macro-expression spotting in long videos.

* :mod:`mer_jax.spotting.readers`: the CAS(ME)^2 long-video and SAMM Long Videos annotation layouts
  (quirks repaired and counted) -> :class:`~mer_jax.spotting.readers.LongVideo` records.
* :mod:`mer_jax.spotting.synth_long`: SynthME long videos in both layouts (known intervals, blinks and
  head motion as distractors).
* :mod:`mer_jax.spotting.evaluate`: IoU matching (MEGC 2020 counting and one-to-one), per-type /
  per-dataset / overall F1, and STRS; the command line is ``python -m mer_jax.spot_eval``.
* :mod:`mer_jax.spotting.spotter`: the training-free spotter (face track, dense optical flow against the frame
  ``k`` earlier with head motion removed, per-video noise-scaled thresholds, intervals at two time scales) and the
  frame-difference baseline; the command line is ``python -m mer_jax.spot``.
* :mod:`mer_jax.spotting.loso`: thresholds chosen on training subjects only (LOSO); the benchmark is
  ``python -m mer_jax.spot_bench``.

docs/spotting.md describes the layouts, the quirks and the counting rules.
"""
