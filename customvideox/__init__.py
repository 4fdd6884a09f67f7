"""CustomVideoX (paper section 4) on diffusers' CogVideoX-5B, its training (section 6.1) and pair curation (Appendix A).

The model code stands alone like a diffusers model: ``config``, ``positions``, ``attention``, ``transformer``,
``lora``, ``pipeline``, ``presets``, ``fake_tensors``, ``base_model``, ``train`` and ``train_data`` import nothing from
``videobench`` (only torch, diffusers, transformers, peft, accelerate and the small shared packages ``mediaio``,
``costmodel`` and ``toytokenizers``). Three parts depend on ``videobench``, each for a stated reason:

* ``method.py`` registers ``customvideox`` as a VideoBench method (``videobench generate --method customvideox``);
* ``cli.py`` shares the ``videobench`` CLI's exit codes and error helpers (``videobench.cli_common``) and checks the
  curation's model files with ``videobench.weights``;
* ``curation/`` (``models.py``, ``quality.py``, and through them ``entity.py`` and ``reference.py``) finds its models
  in the benchmark's weights folder (``videobench.weights``) and embeds frames and measures motion with the
  benchmark's own CLIP preprocessing and RAFT (``videobench.metrics``), so that the curation judges clips exactly as
  the metrics do.
"""
