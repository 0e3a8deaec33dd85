"""The one place that knows architecture names, split along its seams (import from the submodules):

* `hf_varinit.arch.table`: the per-``model_type`` table (`Architecture`: module names -> roles, fused Q/K/V
  layouts, config names), `get_architecture`, `register_architecture`, and the lazy lookup of other model types
  in the entry-point group ``hf_varinit.architectures``;
* `hf_varinit.arch.config`: reading a config (`num_layers`, `hidden_size`, `num_heads`, `num_kv_heads`), checking
  its sizes and comparing two configs' shape entries;
* `hf_varinit.arch.builder`: `build_config` from this project's option names and `config_from_dict`;
* `hf_varinit.arch.keys`: the ``layers.{i}.{role}`` keys of tracked tensors and `shape_differences`.
"""
