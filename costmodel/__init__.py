"""Cost modelling: what a model call, a generation, a training step and a table reproduction cost (FLOPs, peak
memory, seconds), computed without running them: the model is built at its real size on the meta device and its
calls run on FakeTensors (shapes only: no weights, no GPU, a 5B step in seconds to minutes on a laptop).

Depends on torch only (never on ``videobench``, whose registry reaches it through duck-typed arguments), so the model
packages use it as they use ``mediaio``. Four modules, lowest layer first:

* :mod:`costmodel.counting`: the machinery. FakeTensor modules (:func:`~costmodel.counting.meta_module`), FLOP
  counting (:func:`~costmodel.counting.count_flops`), peak memory (:func:`~costmodel.counting.track_peak_memory`),
  a generation as a sum of calls (:class:`~costmodel.counting.FakeStage`, :class:`~costmodel.counting.Piece`), the
  same calls timed for real (:func:`~costmodel.counting.run_for_real`), and the inputs of common calls (text and
  image encoders, VAE encode/decode, denoiser steps).
* :mod:`costmodel.configs`: the real-size configs of the public checkpoints the baselines build on (SD 1.5, SDXL,
  CLIP towers), the stage builder whose result is a :class:`~costmodel.method_cost.StageCost`, and a
  Stable-Diffusion stage's calls.
* :mod:`costmodel.method_cost`: :class:`~costmodel.method_cost.MethodCost` (a method's stages per video) and the
  effective rate that turns FLOPs into seconds.
* :mod:`costmodel.estimates`: the cache of computed costs (``reports/estimate_methods.json``), the lookups
  ``videobench reproduce`` makes, and a table's hours on 1 and 8 GPUs.

What stays beside each model: its own small cost function (``cost=`` of a registered method, e.g.
``baselines.videobooth.cost``, ``customvideox.method.customvideox_cost``), and CustomVideoX's transformer on
FakeTensors (:mod:`customvideox.fake_tensors`), so that a plugin stays one file. ``benchmarks/estimate.py``,
``benchmarks/estimate_methods.py`` and ``benchmarks/training_route_cost.py`` write the numbers the docs quote.
"""
