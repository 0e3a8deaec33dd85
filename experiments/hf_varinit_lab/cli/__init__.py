"""The lab's entry points into ``hf-varinit`` (`hf_varinit.plugins`): light modules, each imports the lab's studies
only when it runs.

* `sweep`: the ``hf-varinit sweep`` command (``hf_varinit.commands``);
* `compare`: ``hf-varinit compare --study init|optimal`` (``hf_varinit.studies``);
* `calibrate`: the ``mlp`` pilot of ``hf-varinit calibrate --model mlp`` (``hf_varinit.pilots``).
"""
