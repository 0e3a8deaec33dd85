"""Bundled YAML configs: ``hf-varinit pretrain --config gpt2-12l-tiny`` finds them by name from any install."""
