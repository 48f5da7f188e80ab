"""The pretrained pipeline: train, evaluate, export and register the shipped models.

``scripts/train_pretrained.py`` is its command line; the work is done here, above
training, evaluation and weights (nothing below imports this package):

- :mod:`.plan`: the plan file (``scripts/pretrained_plan.toml``) and what a config builds;
- :mod:`.commands`: ``deblur`` commands run as worker processes, their logs and locks;
- :mod:`.scores`: manifest scores, quality bars and the shipping rule from eval results;
- :mod:`.describe`: what an entry and a card say (picture, speed, data, recipe);
- :mod:`.pipeline`: one arch at a time on the CPU, then the manifest and the cards;
- :mod:`.cohort_run`: every arch at once, time-boxed, packed for the way back from a GPU.
"""
